"""Releases (backout/releases.py) in-process: what is recorded for what runs (the
commit, the operator's diff as a private patch, the masked compose configuration, the
image of every running service, a retention tag per image), when a checkpoint reuses
the latest release, which retained images are untagged beyond ``keep_last``.
A real git repository and store on tmp_path; the platform is a FakePlatform."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backout.config import Config
from backout.config.model import ReleasesConfig
from backout.environment import MASK, Environment
from backout.errors import ExitCode, NotFoundError, UnhealthyError
from backout.platforms.base import ImageInfo
from backout.releases import (
    RETAIN_REPO,
    _mask_environment,
    current_or_new_release,
    get_release,
    record_release,
    redact_config,
    retained_ref,
    retire_old_images,
)
from backout.state import Store
from tests.support.fakes import FakePlatform

WEB, DB, WORKER = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64


class DigestPlatform(FakePlatform):
    """Images carry registry digests (what a pulled image has); ``gone``: image IDs a
    container still runs but the host no longer lists (removed under it)."""

    def __init__(self, project_dir: Path, *, gone: frozenset[str] = frozenset(),
                 **kw: Any) -> None:
        super().__init__(project_dir, **kw)
        self.gone = gone

    def image(self, ref: str) -> ImageInfo | None:
        info = super().image(ref)
        if info is None or ref in self.gone:
            return None
        return ImageInfo(id=info.id, repo_tags=info.repo_tags,
                         repo_digests=(f"registry.example/{info.id[7:11]}@sha256:ffff",),
                         created="", labels={})


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "HOME": str(repo), "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "Shop Front"
    p.mkdir()
    git(p, "init", "-q", "-b", "main")
    (p / "docker-compose.yml").write_text("services: {}\n")
    git(p, "add", "-A")
    git(p, "commit", "-qm", "one")
    return p


def _config(project: Path, keep_last: int = 10) -> Config:
    return Config(path=project / "backout.toml", project_dir=project,
                  releases=ReleasesConfig(keep_last=keep_last))


def _platform(project: Path, **kw: Any) -> FakePlatform:
    kw.setdefault("running", {"web": WEB, "db": DB})
    kw.setdefault("images", {"shop/web:2": WEB, "mariadb:11": DB, "shop/worker:1": WORKER})
    kw.setdefault("definition", {"name": "shop", "services": {
        "web": {"image": "shop/web:2", "environment": {"DB_PASSWORD": "hunter2hunter",
                                                      "MODE": "prod"}},
        "db": {"image": "mariadb:11"}}})
    return DigestPlatform(project, **kw)


def _record(project: Path, platform: FakePlatform, *, env: Environment | None = None,
            note: str | None = "deployed", keep_last: int = 10) -> Any:
    config = _config(project, keep_last)
    store = Store(config.state_dir)
    return record_release(env or Environment(), config, store, platform, note=note), store


# --------------------------------------------------------------------------- record_release


def test_a_release_records_the_commit_and_every_running_image(project: Path) -> None:
    platform = _platform(project)
    rec, store = _record(project, platform)
    head = git(project, "rev-parse", "HEAD")
    assert (rec.id, rec.commit, rec.dirty, rec.diff_path) == (1, head, False, None)
    expected = {
        "web": {"image": "shop/web:2", "image_id": WEB, "container_id": "c-web",
                "digests": ["registry.example/1111@sha256:ffff"],
                "retained_as": "backout-retained/shop.web:release-1"},
        "db": {"image": "mariadb:11", "image_id": DB, "container_id": "c-db",
               "digests": ["registry.example/2222@sha256:ffff"],
               "retained_as": "backout-retained/shop.db:release-1"},
    }
    assert rec.services == expected
    stored = get_release(store, 1)
    assert stored["services"] == expected
    assert (stored["git_commit"], stored["git_dirty"], stored["diff_path"], stored["note"]) == \
        (head, 0, None, "deployed")
    # the engine is asked first; every image is tagged under backout's own name
    assert platform.calls[0] == ("ping",)
    assert sorted(platform.called("tag")) == sorted([
        (WEB, "backout-retained/shop.web:release-1"), (DB, "backout-retained/shop.db:release-1")])
    assert platform.images["backout-retained/shop.web:release-1"] == WEB
    [event] = [e for e in store.events() if e["action"] == "release.record"]
    assert (event["target"], event["reason"]) == ("release 1", "deployed")
    assert event["detail"] == {"commit": head, "dirty": False, "not_running": []}


def test_a_running_image_the_host_no_longer_lists_has_no_digests(project: Path) -> None:
    platform = _platform(project, gone=frozenset({DB}))
    rec, _store = _record(project, platform)
    assert rec.services["db"]["digests"] == [] and rec.services["db"]["image_id"] == DB
    assert rec.services["web"]["digests"] == ["registry.example/1111@sha256:ffff"]


def test_the_stored_configuration_has_no_secret(project: Path) -> None:
    env = Environment()
    env.redact.add("s3cr3t-value")
    platform = _platform(project, definition={"name": "shop", "services": {
        "web": {"image": "shop/web:2",
                "command": ["serve", "--token=s3cr3t-value", 8080, True],
                "labels": {"note": "uses s3cr3t-value"},
                "environment": {"API_KEY": "k-123456", "auth_header": "Bearer x",
                                "DB_PASSWORD": "hunter2hunter", "GITHUB_TOKEN": "ghp_1",
                                "SESSION_SECRET": "abc", "MODE": "prod", "WORKERS": "4"}},
        "db": {"image": "mariadb:11", "environment": None}}})
    _rec, store = _record(project, platform, env=env)
    config = get_release(store, 1)["compose_config"]
    web = config["services"]["web"]
    assert web["environment"] == {"API_KEY": MASK, "auth_header": MASK, "DB_PASSWORD": MASK,
                                  "GITHUB_TOKEN": MASK, "SESSION_SECRET": MASK,
                                  "MODE": "prod", "WORKERS": "4"}
    assert web["command"] == ["serve", f"--token={MASK}", 8080, True]
    assert web["labels"] == {"note": f"uses {MASK}"}
    assert config["name"] == "shop" and config["services"]["db"]["image"] == "mariadb:11"
    # the platform's own definition is not changed by the masking of the copy
    assert platform.stack["services"]["web"]["command"][1] == "--token=s3cr3t-value"


def test_only_running_services_are_recorded_and_the_others_named(project: Path) -> None:
    platform = _platform(project, running={"web": WEB}, stopped={"db": DB}, definition={
        "name": "shop", "services": {"web": {"image": "shop/web:2"}, "db": {"image": "m"},
                                     "worker": {"image": "shop/worker:1"}}})
    rec, store = _record(project, platform)
    assert set(rec.services) == {"web"}
    assert [c[1] for c in platform.called("tag")] == ["backout-retained/shop.web:release-1"]
    [event] = [e for e in store.events() if e["action"] == "release.record"]
    assert event["detail"]["not_running"] == ["db", "worker"]


def test_nothing_running_is_refused_and_nothing_recorded(project: Path) -> None:
    platform = _platform(project, running={}, stopped={"web": WEB})
    with pytest.raises(UnhealthyError) as info:
        _record(project, platform)
    assert info.value.message == ("no container of compose project 'shop' is running: "
                                  "nothing to record")
    assert info.value.fix == "start the stack (docker compose up -d) first"
    assert info.value.exit_code == ExitCode.UNHEALTHY
    store = Store(_config(project).state_dir)
    assert store.releases() == [] and store.events() == [] and platform.called("tag") == []


def test_an_engine_not_answering_records_nothing(project: Path) -> None:
    platform = _platform(project)
    platform.fail_on("ping")
    with pytest.raises(UnhealthyError):
        _record(project, platform)
    assert Store(_config(project).state_dir).releases() == []
    assert [c[0] for c in platform.calls] == ["ping"]


def test_a_failed_retention_tag_leaves_a_readable_release(project: Path) -> None:
    """Recorded first, tagged after: a tag failing leaves the release with its images
    (without retention) for whatever reads releases next, never a row without services."""
    platform = _platform(project)
    platform.fail_on("tag")
    with pytest.raises(UnhealthyError, match="tag failed"):
        _record(project, platform)
    [release] = Store(_config(project).state_dir).releases()
    assert {s: svc["image_id"] for s, svc in release["services"].items()} == {"web": WEB,
                                                                              "db": DB}
    assert not any("retained_as" in svc for svc in release["services"].values())


def test_without_a_project_name_the_directory_names_the_retained_tags(project: Path) -> None:
    platform = _platform(project, definition={"services": {"web": {"image": "shop/web:2"}}},
                         running={"web": WEB})
    with pytest.raises(UnhealthyError, match="'Shop Front'"):
        _record(project, _platform(project, running={}, definition={"services": {}}))
    rec, _store = _record(project, platform)
    assert rec.services["web"]["retained_as"] == "backout-retained/shop-front.web:release-1"


def test_the_operators_uncommitted_diff_is_kept_as_a_private_patch(project: Path) -> None:
    (project / "docker-compose.yml").write_text("services: {web: {}}\n")
    rec, store = _record(project, _platform(project))
    assert rec.dirty and rec.diff_path == ".backout/diffs/release-1.patch"
    patch = project / rec.diff_path
    assert "+services: {web: {}}" in patch.read_text()
    assert patch.read_text() == git(project, "diff", "HEAD", "--binary") + "\n"
    assert stat.S_IMODE(patch.stat().st_mode) == 0o600
    assert stat.S_IMODE(patch.parent.stat().st_mode) == 0o700
    stored = get_release(store, rec.id)
    assert (stored["git_dirty"], stored["diff_path"]) == (1, ".backout/diffs/release-1.patch")
    [event] = [e for e in store.events() if e["action"] == "release.record"]
    assert event["detail"]["dirty"] is True
    # the second dirty release gets its own patch
    rec2, _ = _record(project, _platform(project))
    assert rec2.diff_path == ".backout/diffs/release-2.patch" and (project / rec2.diff_path).exists()


def test_an_untracked_file_is_dirty_but_has_no_patch(project: Path) -> None:
    (project / "notes.txt").write_text("x")
    rec, store = _record(project, _platform(project))
    assert rec.dirty and rec.diff_path is None
    assert not (project / ".backout" / "diffs").exists()
    assert get_release(store, rec.id)["diff_path"] is None


def test_backouts_own_files_do_not_make_the_tree_dirty(project: Path) -> None:
    (project / "backout.toml").write_text("[project]\n")
    rec, _ = _record(project, _platform(project))
    assert not rec.dirty  # and .backout (the store itself) is not counted either


def test_outside_a_git_repository_there_is_no_commit(tmp_path: Path) -> None:
    rec, store = _record(tmp_path, _platform(tmp_path))
    assert (rec.commit, rec.dirty, rec.diff_path) == (None, False, None)
    assert get_release(store, rec.id)["git_commit"] is None


def test_recording_retires_images_beyond_keep_last(project: Path) -> None:
    platform = _platform(project, running={"web": WEB}, definition={
        "name": "shop", "services": {"web": {"image": "shop/web:2"}}})
    ids = []
    for n in range(4):
        image = f"sha256:{n}" + "0" * 63
        platform.images[f"shop/web:{n}"] = image
        platform.container_image["web"] = image
        rec, _store = _record(project, platform, keep_last=2)
        ids.append(rec.id)
    assert ids == [1, 2, 3, 4]
    assert [c[0] for c in platform.called("untag")] == [
        "backout-retained/shop.web:release-1", "backout-retained/shop.web:release-2"]


# --------------------------------------------------------------------------- masking


def test_mask_environment_masks_credential_looking_names_in_any_case() -> None:
    data = {"services": {
        "a": {"environment": {"PASSWORD": "1", "db_pass": "2", "MySecret": "3", "token": "4",
                              "SSH_KEY": "5", "OAUTH_URL": "6", "USER": "7", "PORT": "8"}},
        "b": {}, "c": {"environment": None}}}
    out = _mask_environment(data)
    assert out is data
    assert data["services"]["a"]["environment"] == {
        "PASSWORD": MASK, "db_pass": MASK, "MySecret": MASK, "token": MASK, "SSH_KEY": MASK,
        "OAUTH_URL": MASK, "USER": "7", "PORT": "8"}
    assert data["services"]["b"] == {} and data["services"]["c"] == {"environment": None}
    assert _mask_environment({"name": "x"}) == {"name": "x"}
    assert _mask_environment({"services": None}) == {"services": None}


def test_redact_config_masks_known_secrets_at_any_depth() -> None:
    env = Environment()
    env.redact.add("topsecret")
    data = {"a": ["x-topsecret", {"b": "topsecret"}], "n": 3, "f": 1.5, "t": None, "ok": False}
    assert redact_config(env, data) == {"a": [f"x-{MASK}", {"b": MASK}], "n": 3, "f": 1.5,
                                        "t": None, "ok": False}
    assert data["a"][0] == "x-topsecret"  # a copy
    assert redact_config(env, "topsecret!") == f"{MASK}!"


@pytest.mark.parametrize(("project", "service", "release", "ref"), [
    ("shop", "web", 3, "backout-retained/shop.web:release-3"),
    ("Shop Front", "API_v2", 12, "backout-retained/shop-front.api_v2:release-12"),
    ("a/b", "c:d", 1, "backout-retained/a-b.c-d:release-1"),
    ("x.y-z", "w_1", 7, "backout-retained/x.y-z.w_1:release-7"),
])
def test_retained_ref_is_a_valid_tag_of_backouts_own(project: str, service: str, release: int,
                                                     ref: str) -> None:
    assert retained_ref(project, service, release) == ref
    assert ref.startswith(RETAIN_REPO + "/")


# --------------------------------------------------------------------------- retire_old_images


def _releases(store: Store, platform: FakePlatform, count: int, *,
              shared: dict[int, int] | None = None) -> list[str]:
    """``count`` releases of one service, release N retained as ref N (its own image,
    or release ``shared[N]``'s)."""
    refs = []
    for n in range(1, count + 1):
        owner = (shared or {}).get(n, n)
        image = f"sha256:{owner:064d}"
        ref = retained_ref("shop", "web", owner)
        platform.images[ref] = image
        store.add_release(git_commit=f"c{n}", git_dirty=False, diff_path=None, compose_config={},
                          services={"web": {"image_id": image, "retained_as": ref}})
        refs.append(ref)
    return refs


@pytest.mark.parametrize(("keep_last", "kept"), [(3, 3), (4, 4), (2, 2), (1, 2), (0, 2)])
def test_images_beyond_keep_last_are_untagged_never_the_two_newest(
        tmp_path: Path, keep_last: int, kept: int) -> None:
    store, platform = Store(tmp_path), FakePlatform(tmp_path)
    refs = _releases(store, platform, 6)
    removed = retire_old_images(_config(tmp_path, keep_last), store, platform)
    gone = list(reversed(refs[: 6 - kept]))  # newest first
    assert removed == gone
    assert [c[0] for c in platform.called("untag")] == gone
    assert set(platform.images) == set(refs[6 - kept:])
    [event] = [e for e in store.events() if e["action"] == "release.retire_images"]
    assert event["target"] == f"{len(gone)} tags"
    assert event["detail"] == {"removed": gone, "keep_last": keep_last}


def test_an_image_a_kept_release_shares_stays(tmp_path: Path) -> None:
    store, platform = Store(tmp_path), FakePlatform(tmp_path)
    # release 4 went back to release 1's image (a rollback, then recorded)
    refs = _releases(store, platform, 4, shared={4: 1})
    assert refs[3] == refs[0]
    assert retire_old_images(_config(tmp_path, 2), store, platform) == [refs[1]]
    assert refs[0] in platform.images


def test_nothing_to_retire_is_no_event(tmp_path: Path) -> None:
    store, platform = Store(tmp_path), FakePlatform(tmp_path)
    refs = _releases(store, platform, 3)
    assert retire_old_images(_config(tmp_path, 3), store, platform) == []
    assert platform.called("untag") == [] and store.events() == []
    # an old tag already gone, or a release without one: nothing to untag either
    del platform.images[refs[0]]
    store.add_release(git_commit="c4", git_dirty=False, diff_path=None, compose_config={},
                      services={"web": {"image_id": "sha256:x"}})
    assert retire_old_images(_config(tmp_path, 2), store, platform) == [refs[1]]
    assert [c[0] for c in platform.called("untag")] == [refs[1]]


# --------------------------------------------------------------------------- current_or_new_release


def _current(project: Path, platform: FakePlatform, store: Store) -> int:
    return current_or_new_release(Environment(), _config(project), store, platform)


def test_the_latest_release_is_reused_when_it_is_exactly_what_runs(project: Path) -> None:
    platform = _platform(project)
    rec, store = _record(project, platform)
    platform.calls.clear()
    assert _current(project, platform, store) == rec.id
    assert len(store.releases()) == 1 and platform.called("tag") == []


def test_a_checkpoint_records_a_new_release_when_nothing_is_recorded(project: Path) -> None:
    store = Store(_config(project).state_dir)
    assert _current(project, _platform(project), store) == 1
    assert get_release(store, 1)["note"] == "recorded by checkpoint"


@pytest.mark.parametrize("change", ["image", "stopped", "started", "commit", "dirty", "was-dirty"])
def test_anything_different_from_the_latest_release_is_a_new_release(project: Path,
                                                                     change: str) -> None:
    platform = _platform(project, stopped={"worker": WORKER})
    if change == "was-dirty":
        (project / "docker-compose.yml").write_text("services: {x: {}}\n")
    rec, store = _record(project, platform)
    if change == "image":
        platform.container_image["web"] = WORKER
    elif change == "stopped":
        platform.state["db"] = "exited"
    elif change == "started":
        platform.state["worker"] = "running"
    elif change == "commit":
        (project / "README").write_text("x")
        git(project, "add", "-A")
        git(project, "commit", "-qm", "two")
    elif change == "dirty":
        (project / "docker-compose.yml").write_text("services: {x: {}}\n")
    elif change == "was-dirty":
        git(project, "checkout", "-q", "--", "docker-compose.yml")
    new = _current(project, platform, store)
    assert new == rec.id + 1
    assert get_release(store, new)["note"] == "recorded by checkpoint"


# --------------------------------------------------------------------------- get_release


def test_an_unknown_release_is_not_found_with_the_fix(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(NotFoundError) as info:
        get_release(store, 7)
    assert info.value.message == "no release 7"
    assert info.value.fix == "list them with `backout releases`"
    assert info.value.exit_code == ExitCode.NOT_FOUND
