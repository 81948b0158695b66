"""Issue 17 against the real things: restic 0.14 repositories on another host (an
OpenSSH server with key authentication and ``internal-sftp`` in a network namespace
this module creates) and on a local path.

* Copies after publish, checked, listed with where each set lives; restores from a
  repository after the local set directory is deleted (`backups verify`; rollback db
  of each engine on the real stack).
* Faults: the link dropped mid-upload, a full repository disk, a wrong password, a
  repository locked by another restic: one clear line, a documented exit code, the
  local set usable, the copy pending and retried by the next run.
* Retention applied to the repositories with the local policy; --dry-run lists.
* The repository password in no argv, output, log, manifest or state database.

The stack-free tests use synthetic sets (random bytes, a real manifest) in a minimal
project: a copy neither reads nor parses the artifacts, it moves and checks them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_DOCKER
from tests.integration.test_backups import (
    CmdlineWatcher,
    assert_one_line_error,
    backout,
    clean_env,
    ok_json,
)
from tests.support.sftp_host import SftpHost, available

pytestmark = pytest.mark.docker  # `docker compose config` validates the project

PASSWORD_VAR = "BACKOUT_TEST_REPO_PASSWORD"


@pytest.fixture(scope="module")
def sftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpHost]:
    problem = available()
    if problem:
        if REQUIRE_DOCKER:
            pytest.fail(f"BACKOUT_REQUIRE_DOCKER=1 but the SFTP host {problem}", pytrace=False)
        pytest.skip(problem)
    host = SftpHost(tmp_path_factory.mktemp("sftp-host")).start()
    try:
        yield host
    finally:
        host.close()


def make_set(project: Path, set_id: str, size: int, completed_at: datetime) -> dict[str, Any]:
    """A published set of one volume artifact: a tar of one file of ``size`` random bytes,
    compressed by zstd (random data does not shrink), with its real manifest."""
    root = project / ".backout" / "backups" / set_id
    root.mkdir(parents=True, mode=0o700)
    raw = BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = size
        tar.addfile(info, BytesIO(secrets.token_bytes(size)))
    data = subprocess.run(["zstd", "-q", "-c"], input=raw.getvalue(), capture_output=True,
                          check=True, timeout=60).stdout
    (root / "data.tar.zst").write_bytes(data)
    stamp = completed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = {"format": "backout-backup", "format_version": 1, "id": set_id, "kind": "backup",
                "label": None, "created_at": stamp, "completed_at": stamp, "databases": {},
                "volumes": {"data": {"type": "volume", "volume": "data", "files": 1, "dirs": 0,
                                     "symlinks": 0, "bytes": size,
                                     "artifacts": ["data.tar.zst"]}},
                "artifacts": {"data.tar.zst": {"bytes": len(data), "volume": "data",
                                               "sha256": hashlib.sha256(data).hexdigest()}}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


class Project:
    """A minimal project (one compose service, no databases) with repositories."""

    def __init__(self, path: Path, sftp: SftpHost, password: str) -> None:
        self.path = path
        self.sftp = sftp
        self.password = password
        self.repo_name = f"repo-{secrets.token_hex(3)}"
        self.local_repo = path.parent / f"{path.name}-restic"
        path.mkdir(parents=True, exist_ok=True)
        (path / "docker-compose.yml").write_text(
            "services:\n  app:\n    image: debian:bookworm-slim\n")
        (path / "repo-password").write_text(password + "\n")
        (path / "repo-password").chmod(0o600)
        self.write_config()

    def write_config(self, *, keep_daily: int = 0, timeout: int = 120, extra: str = "") -> None:
        (self.path / "backout.toml").write_text(
            '[project]\nenv_file = ""\nname = "bo17-offsite"\n\n'
            f"[backups]\nkeep_last = 1\nkeep_daily = {keep_daily}\n\n"
            "[repositories.offsite]\n"
            f'url = "{self.sftp.url(self.repo_name)}"\n'
            f'password_env = "{PASSWORD_VAR}"\n'
            f'ssh_config = "{self.sftp.ssh_config}"\n'
            f"timeout_seconds = {timeout}\n\n"
            "[repositories.nas]\n"
            f'url = "{self.local_repo}"\n'
            'password_file = "repo-password"\n' + extra)

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(**{PASSWORD_VAR: self.password, **extra})

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return backout(*args, cwd=self.path, env=env or self.env(), timeout=timeout)

    def listed(self) -> dict[str, dict[str, Any]]:
        rows = ok_json(self.run("backups", "list", "--json"))["backups"]
        return {r["id"]: r for r in rows}

    def restic(self, repo: str, *args: str) -> subprocess.CompletedProcess[str]:
        if repo == "offsite":
            argv = ["restic", "-r", self.sftp.url(self.repo_name), "-o",
                    f"sftp.command=ssh -F {self.sftp.ssh_config} {self.sftp.alias} -s sftp"]
        else:
            argv = ["restic", "-r", str(self.local_repo)]
        return subprocess.run([*argv, *args], env={**os.environ, "RESTIC_PASSWORD": self.password},
                              capture_output=True, text=True, timeout=120, check=False)

    def snapshots(self, repo: str) -> list[str]:
        """Set ids of the backout snapshots in a repository, by our own restic call."""
        result = self.restic(repo, "snapshots", "--json", "--tag", "backout")
        assert result.returncode == 0, result.stderr
        return sorted(t[4:] for s in json.loads(result.stdout) for t in s["tags"]
                      if t.startswith("set:"))


@pytest.fixture
def project(tmp_path: Path, sftp: SftpHost) -> Project:
    return Project(tmp_path / "proj", sftp, f"sentinel-{secrets.token_hex(16)}")


def _copies(row: dict[str, Any]) -> dict[str, str]:
    return {name: c["status"] for name, c in row["copies"].items()}


# --------------------------------------------------------------------------- copy, list, fetch


def test_copy_checks_lists_and_verify_fetches_when_the_local_set_is_gone(
        project: Project) -> None:
    set_id = "20261203T010000Z-aaaa"
    make_set(project.path, set_id, 300_000, datetime.now(UTC))
    watcher = CmdlineWatcher([project.password.encode()], (b"restic",))
    watcher.start()
    try:
        copied = project.run("backups", "copy", set_id, "--json", "--verbose")
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)
    data = ok_json(copied)
    assert data["copied"] == {"offsite": [set_id], "nas": [set_id]}
    assert watcher.hits == [] and b"restic" in watcher.seen  # it looked while restic ran
    row = project.listed()[set_id]
    assert row["local"] is True and _copies(row) == {"offsite": "copied", "nas": "copied"}
    assert all(c["verified_at"] for c in row["copies"].values())
    assert project.snapshots("offsite") == [set_id] == project.snapshots("nas")
    human = project.run("backups", "list")
    assert "local, nas (checked" in human.stdout and "offsite (checked" in human.stdout

    # The local set directory is deleted: the set is still listed, from its copies,
    # and `backups verify` fetches a copy and checks it byte for byte.
    shutil.rmtree(project.path / ".backout" / "backups" / set_id)
    row = project.listed()[set_id]
    assert row["local"] is False and row["usable"] is True
    verified = ok_json(project.run("backups", "verify", set_id, "--json"))
    assert verified["verify"]["ok"] is True
    assert not (project.path / ".backout" / "backups" / set_id).exists()  # not republished

    for where in [copied.stdout, copied.stderr, *_state_texts(project.path)]:
        assert project.password not in where


def _state_texts(project: Path) -> list[str]:
    return [p.read_bytes().decode(errors="replace") for p in (project / ".backout").rglob("*")
            if p.is_file()]


# --------------------------------------------------------------------------- faults


def test_wrong_password_fails_cleanly_and_the_copy_stays_pending(project: Project) -> None:
    make_set(project.path, "20261203T000000Z-bbba", 20_000, datetime.now(UTC))
    ok_json(project.run("backups", "copy", "--json"))  # creates both repositories
    set_id = "20261203T010000Z-bbbb"
    make_set(project.path, set_id, 50_000, datetime.now(UTC))
    wrong = project.run("backups", "copy", "--json", "--to", "offsite",
                        env=project.env(**{PASSWORD_VAR: "not-the-password"}))
    line = assert_one_line_error(wrong, 2, "repository_password", "offsite", "wrong password")
    assert "password_env" in line
    row = project.listed()[set_id]
    assert row["usable"] is True and row["copies"]["offsite"]["status"] == "pending"
    assert row["copies"]["offsite"]["attempts"] >= 1
    assert "PENDING" in project.run("backups", "list").stdout
    retried = ok_json(project.run("backups", "copy", "--json"))  # the next run
    assert retried["copied"]["offsite"] == [set_id]
    assert _copies(project.listed()[set_id])["offsite"] == "copied"


def _wait_for_process(*needles: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if all(n in cmdline for n in needles):
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no process with {needles} appeared")


@pytest.mark.soak  # heavy: run before reporting (pytest -m soak)
def test_link_dropped_mid_upload_fails_cleanly_then_the_next_run_copies(
        project: Project, sftp: SftpHost) -> None:
    project.write_config(timeout=90)
    first = "20261203T010000Z-cccc"
    make_set(project.path, first, 10_000, datetime.now(UTC))
    ok_json(project.run("backups", "copy", "--json", "--to", "offsite"))  # repository exists
    set_id = "20261203T020000Z-dddd"
    make_set(project.path, set_id, 12_000_000, datetime.now(UTC))
    sftp.throttle("16mbit")  # ~6 s for the set: the drop lands mid-upload
    try:
        run = subprocess.Popen([*_backout_argv(), "backups", "copy", "--json", "--to", "offsite"],
                               cwd=project.path, env=project.env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        _wait_for_process("restic", "backup", set_id)
        time.sleep(1.5)
        sftp.drop_link()
        started = time.monotonic()
        out, err = run.communicate(timeout=240)
        took = time.monotonic() - started
    finally:
        sftp.restore_link()
        sftp.unthrottle()
    result = subprocess.CompletedProcess(run.args, run.returncode, out, err)
    assert_one_line_error(result, 6, "repository_unreachable", "offsite")
    assert took < 120, took
    row = project.listed()[set_id]
    assert row["usable"] is True and row["copies"]["offsite"]["status"] == "pending"
    assert set_id not in project.snapshots("offsite")
    retried = ok_json(project.run("backups", "copy", "--json", "--to", "offsite"))
    assert retried["copied"]["offsite"] == [set_id]
    assert set_id in project.snapshots("offsite")


def _backout_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "backout"]


@pytest.fixture
def small_repository_disk(project: Project) -> Iterator[Path]:
    mount = project.local_repo
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True,
                   timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_full_repository_disk_fails_cleanly_then_the_next_run_copies(
        project: Project, small_repository_disk: Path) -> None:
    set_id = "20261203T010000Z-eeee"
    make_set(project.path, set_id, 6_000_000, datetime.now(UTC))  # random: no compression
    full = project.run("backups", "copy", "--json", "--to", "nas")
    assert_one_line_error(full, 6, "repository_full", "nas", "no space left")
    row = project.listed()[set_id]
    assert row["usable"] is True and row["copies"]["nas"]["status"] == "pending"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_repository_disk)], check=True,
                   timeout=30)
    retried = ok_json(project.run("backups", "copy", "--json", "--to", "nas"))
    assert retried["copied"]["nas"] == [set_id]


def test_locked_repository_fails_cleanly_then_the_next_run_copies(project: Project) -> None:
    set_id = "20261203T010000Z-ffff"
    make_set(project.path, set_id, 50_000, datetime.now(UTC))
    ok_json(project.run("backups", "copy", "--json", "--to", "nas"))
    other = "20261203T020000Z-0000"
    make_set(project.path, other, 50_000, datetime.now(UTC))
    # Another restic holds the repository's lock while it reads its standard input.
    holder = subprocess.Popen(["restic", "-r", str(project.local_repo), "backup", "--stdin",
                               "--stdin-filename", "other.txt", "-q"],
                              env={**os.environ, "RESTIC_PASSWORD": project.password},
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # it has taken its lock
        locked = project.run("backups", "copy", "--json", "--to", "nas")
        assert_one_line_error(locked, 4, "repository_locked", "nas", "locked")
        assert project.listed()[other]["copies"]["nas"]["status"] == "pending"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    retried = ok_json(project.run("backups", "copy", "--json", "--to", "nas"))
    assert retried["copied"]["nas"] == [other]


# --------------------------------------------------------------------------- retention


@pytest.mark.soak  # heavy: run before reporting (pytest -m soak)
def test_retention_applies_the_local_policy_to_each_repository(project: Project) -> None:
    now = datetime.now(UTC)
    ids = [f"{(now - timedelta(days=d)).strftime('%Y%m%dT%H%M%SZ')}-{d:04d}" for d in range(4)]
    for d, set_id in enumerate(ids):
        make_set(project.path, set_id, 20_000, now - timedelta(days=d))
    ok_json(project.run("backups", "copy", *ids, "--json"))
    assert project.snapshots("nas") == sorted(ids) == project.snapshots("offsite")
    project.write_config(keep_daily=2)  # newest two days
    dry = ok_json(project.run("backups", "prune", "--dry-run", "--json"))
    assert sorted(dry["removed"]) == sorted(ids[2:])
    assert {k: sorted(v) for k, v in dry["repositories"].items()} == \
        {"offsite": sorted(ids[2:]), "nas": sorted(ids[2:])}
    assert project.snapshots("nas") == sorted(ids)  # --dry-run removed nothing
    done = ok_json(project.run("backups", "prune", "--json"))
    assert sorted(done["repositories"]["nas"]) == sorted(ids[2:])
    assert project.snapshots("nas") == sorted(ids[:2]) == project.snapshots("offsite")
    assert set(project.listed()) == set(ids[:2])


# --------------------------------------------------------------------------- schedule


def test_schedule_notifies_a_failed_run_and_stops_cleanly_on_sigterm(project: Project) -> None:
    import sys

    events = project.path / "events.jsonl"
    hook = project.path / "hook.py"
    hook.write_text(f"import sys\nopen({str(events)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    project.write_config(extra=f'\n[monitor.notify]\ncommand = "{sys.executable} {hook}"\n')
    # This project has nothing to back up: the run fails, is notified, exits with its code.
    once = project.run("schedule", "--once", "--json")
    assert_one_line_error(once, 2, "usage", "nothing configured to back up")
    event = json.loads(events.read_text().splitlines()[0])
    assert event["kind"] == "scheduled_backup_failed" and event["exit_code"] == 2
    assert "scheduled checkpoint failed" in once.stderr

    looping = subprocess.Popen([*_backout_argv(), "schedule", "--on", "daily"], cwd=project.path,
                               env=project.env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert looping.stderr is not None
    first = looping.stderr.readline()
    assert "next checkpoint at" in first and "00:00:00 UTC (daily)" in first, first
    looping.send_signal(signal.SIGTERM)
    _out, err = looping.communicate(timeout=30)
    assert looping.returncode == 0, err
    assert "schedule stopped by SIGTERM after 0 checkpoint(s)" in err


# --------------------------------------------------------------------------- the real stack

from tests.integration.test_rollback import (  # noqa: E402  (the rig of the rollback tests)
    SNAPSHOTS,
    Rig,
    data_snapshot,
    mutate,
    quiet,
    rig,
)
from tests.support.snapshots import pg_snapshot  # noqa: E402

__all__ = ["quiet", "rig"]  # fixtures used by name


@pytest.fixture(scope="module")
def offsite_rig(rig: Rig, sftp: SftpHost, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Rig]:
    """The rollback tests' rig, its backout.toml with an SFTP and a local-path repository;
    the password in the project's .env (as an operator keeps it)."""
    password = f"sentinel-{secrets.token_hex(16)}"
    local = tmp_path_factory.mktemp("stack-restic") / "repo"
    toml = rig.project / "backout.toml"
    original = toml.read_text()
    pw_file = local.parent / "nas-password"
    pw_file.write_text(password + "\n")
    rig.stack.env[PASSWORD_VAR] = password
    rig.stack._write_env()
    toml.write_text(original + "\n[repositories.offsite]\n"
                    f'url = "{sftp.url("stack-" + secrets.token_hex(3))}"\n'
                    f'password_env = "{PASSWORD_VAR}"\nssh_config = "{sftp.ssh_config}"\n'
                    "\n[repositories.nas]\n"
                    f'url = "{local}"\npassword_file = "{pw_file}"\n')
    rig.password = password  # type: ignore[attr-defined]
    try:
        yield rig
    finally:
        toml.write_text(original)
        rig.stack.env.pop(PASSWORD_VAR, None)
        rig.stack._write_env()


@pytest.fixture(scope="module")
def copied_checkpoint(offsite_rig: Rig) -> dict[str, Any]:
    """A checkpoint of still data, copied to both repositories."""
    rig = offsite_rig
    rig.set_write_interval("0")
    rig.baseline()
    before = {**data_snapshot(rig.stack), "postgresql": pg_snapshot(rig.stack)}
    password = rig.password  # type: ignore[attr-defined]
    # the checkpoint tests' sentinel check, extended to the repository password: it is in
    # no argv (watched while restic runs), no output of a --verbose run, no manifest
    watcher = CmdlineWatcher([password.encode()], (b"restic", b"mariadb-dump"))
    watcher.start()
    try:
        run = rig.run("checkpoint", "--label", "test_offsite: still data", "--json",
                      "--verbose")
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)
    cp = ok_json(run)
    assert watcher.hits == [] and {b"restic", b"mariadb-dump"} <= watcher.seen
    assert "restic" in run.stderr  # --verbose logged the restic calls
    manifest_text = (rig.project / ".backout" / "backups" / cp["set_id"] / "manifest.json"
                     ).read_text()
    for text in (run.stdout, run.stderr, manifest_text):
        assert password not in text
    copy = next(s for s in cp["steps"] if s["name"] == "copy to offsite, nas")
    assert copy["status"] == "done", copy
    rows = {r["id"]: r for r in rig.json("backups", "list")["backups"]}
    assert {n: c["status"] for n, c in rows[cp["set_id"]]["copies"].items()} == \
        {"offsite": "copied", "nas": "copied"}
    return {"set_id": cp["set_id"], "id": cp["checkpoint_id"], "data": before}


def _delete_local(rig: Rig, set_id: str) -> None:
    shutil.rmtree(rig.project / ".backout" / "backups" / set_id)
    assert not (rig.project / ".backout" / "backups" / set_id).exists()


@pytest.mark.parametrize("database", [
    "mysql",  # in the default run; the other engines under -m soak (about a minute each)
    pytest.param("redis", marks=pytest.mark.soak), pytest.param("mongodb", marks=pytest.mark.soak),
    pytest.param("postgresql", marks=pytest.mark.soak)])
def test_rollback_db_restores_exactly_from_the_repository_after_the_local_set_is_deleted(
        offsite_rig: Rig, copied_checkpoint: dict[str, Any], database: str) -> None:
    rig, set_id = offsite_rig, copied_checkpoint["set_id"]
    snap = SNAPSHOTS[database]
    mutate(rig.stack, database, "offsite")
    assert snap(rig.stack) != copied_checkpoint["data"][database]
    _delete_local(rig, set_id)

    steps = rig.plan("rollback", "db", database, set_id)
    assert [s["key"] for s in steps][:2] == [f"fetch:{set_id}", f"verify:{database}"]
    done = rig.json("rollback", "db", database, set_id, "--yes")
    assert done["status"] == "succeeded"
    assert snap(rig.stack) == copied_checkpoint["data"][database]
    # fetched back and published: the set is local again, whole
    assert (rig.project / ".backout" / "backups" / set_id / "manifest.json").is_file()


@pytest.mark.soak  # heavy: run before reporting (pytest -m soak)
def test_a_checkpoint_whose_copy_fails_is_published_and_the_next_run_copies_it(
        offsite_rig: Rig) -> None:
    rig = offsite_rig
    right = rig.stack.env[PASSWORD_VAR]
    rig.stack.env[PASSWORD_VAR] = "not-the-password"
    rig.stack._write_env()
    try:
        failed = rig.run("checkpoint", "--label", "test_offsite: wrong password", "--json")
    finally:
        rig.stack.env[PASSWORD_VAR] = right
        rig.stack._write_env()
    assert_one_line_error(failed, 2, "repository_password", "published and usable locally",
                          "offsite")
    rows = {r["id"]: r for r in rig.json("backups", "list")["backups"]}
    newest = max(rows)
    assert rows[newest]["usable"] is True and rows[newest]["kind"] == "checkpoint"
    assert rows[newest]["copies"]["offsite"]["status"] == "pending"
    assert rows[newest]["copies"]["nas"]["status"] == "copied"  # the other one got it
    assert rig.json("status")["backups"]["pending_copies"] >= 1
    retried = rig.json("backups", "copy")
    assert newest in retried["copied"]["offsite"]
    assert rig.json("status")["backups"]["pending_copies"] == 0


@pytest.mark.soak  # heavy: run before reporting (pytest -m soak)
def test_verify_restore_test_and_emergency_with_data_from_the_repository(
        offsite_rig: Rig, copied_checkpoint: dict[str, Any]) -> None:
    rig, set_id = offsite_rig, copied_checkpoint["set_id"]
    _delete_local(rig, set_id)
    verified = rig.json("backups", "verify", set_id, "--restore-test")
    assert verified["verify"]["ok"] is True
    assert set(verified["restore_test"]) == {"mysql", "redis", "mongodb", "postgresql"}
    assert not (rig.project / ".backout" / "backups" / set_id).exists()

    mutate(rig.stack, "mysql", "emergency-offsite")
    steps = rig.plan("rollback", "emergency", f"cp{copied_checkpoint['id']}", "--with-data")
    assert steps[1]["key"] == f"fetch:{set_id}", [s["key"] for s in steps]
    rig.json("rollback", "emergency", f"cp{copied_checkpoint['id']}", "--with-data", "--yes")
    assert SNAPSHOTS["mysql"](rig.stack) == copied_checkpoint["data"]["mysql"]

    # The repository password: in no output, log, manifest or state file.
    password = rig.password  # type: ignore[attr-defined]
    events = rig.run("events", "--json", "--limit", "1000")
    for text in (events.stdout, *_state_texts(rig.project)):
        assert password not in text.replace(f"{PASSWORD_VAR}={password}", "")
