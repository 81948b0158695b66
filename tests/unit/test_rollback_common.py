"""What every rollback kind shares (backout.rollback.common): naming a service of the
stack, the image a service runs, a release by its reference (N, rN, release:N), our own
tag for a rollback's target image, and the confirmation before a change. In-process,
against a FakePlatform and a real Store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backout.errors import ExitCode, NotFoundError, UsageError
from backout.releases import RETAIN_REPO
from backout.rollback import common
from backout.state import Store
from tests.support.fakes import FakePlatform

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


# ------------------------------------------------------------------------ require_service


def test_a_service_of_the_definition_is_its_spec() -> None:
    spec = {"image": "web:1"}
    assert common.require_service({"services": {"web": spec, "db": {}}}, "web") is spec


def test_an_unknown_service_is_named_with_a_guess_and_the_list() -> None:
    with pytest.raises(NotFoundError) as err:
        common.require_service({"services": {"web": {}, "db": {}, "api": {}}}, "wbe")
    assert err.value.message.startswith('no service "wbe" in the compose project')
    assert "web" in err.value.message.removeprefix('no service "wbe" in the compose project')
    assert err.value.fix == "services: api, db, web"  # sorted, every one


def test_a_definition_without_services_knows_none() -> None:
    for definition in ({}, {"services": None}):
        with pytest.raises(NotFoundError) as err:
            common.require_service(definition, "web")
        assert err.value.message == 'no service "web" in the compose project'
        assert err.value.fix == "services: "


# -------------------------------------------------------------------------- running_image


def test_the_running_image_is_the_first_containers() -> None:
    platform = FakePlatform(running={"web": NEW, "worker": OLD})
    assert common.running_image(platform, "web") == NEW
    assert common.running_image(platform, "worker") == OLD
    assert platform.called("containers") == [("web",), ("worker",)]  # asked one service
    assert common.running_image(platform, "nothing") is None


# ------------------------------------------------------------------------- release_by_ref


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "state")
    for commit in ("c1", "c2", "c3"):
        store.add_release(git_commit=commit, git_dirty=False, diff_path=None,
                          compose_config={}, services={})
    return store


@pytest.mark.parametrize(("ref", "release_id"), [
    ("2", 2), ("r2", 2), ("release:2", 2), ("3", 3), ("r1", 1), ("000002", 2)])
def test_a_release_is_named_by_its_number_in_three_spellings(
        store: Store, ref: str, release_id: int) -> None:
    release = common.release_by_ref(store, ref)
    assert release is not None and release["id"] == release_id
    assert release["git_commit"] == f"c{release_id}"


@pytest.mark.parametrize("ref", ["cp2", "checkpoint:2", "v2", "r", "release:", "2a", "x2",
                                 "1234567", "r 2", "release:r2", "main", ""])
def test_what_is_not_a_release_reference_is_none(store: Store, ref: str) -> None:
    assert common.release_by_ref(store, ref) is None


def test_a_release_that_does_not_exist_says_where_to_look(store: Store) -> None:
    with pytest.raises(NotFoundError) as err:
        common.release_by_ref(store, "r42")
    assert err.value.message == "no release 42"
    assert err.value.fix == "list them with `backout releases`"
    assert err.value.exit_code == ExitCode.NOT_FOUND


@pytest.mark.parametrize(("ref", "matches"), [
    ("cp7", "7"), ("checkpoint:7", "7"), ("cp123456", "123456"), ("7", None),
    ("cp", None), ("cp1234567", None), ("checkpoint7", None), ("r7", None)])
def test_checkpoint_references(ref: str, matches: str | None) -> None:
    m = common.CHECKPOINT_REF.match(ref)
    assert (m.group(1) if m else None) == matches


# ----------------------------------------------------------------- target_ref, ensure_tagged


def test_the_target_tag_is_ours_and_names_project_service_and_image() -> None:
    assert common.target_ref("shop", "web", OLD) == f"{RETAIN_REPO}/shop.web:target-aaaaaaaaaaaa"
    # a reference docker accepts: lower case, nothing but [a-z0-9_.-] in the name
    assert common.target_ref("My Shop", "Web/API+1", "sha256:0123456789abcdef") == \
        f"{RETAIN_REPO}/my-shop.web-api-1:target-0123456789ab"
    assert common.target_ref("p_1", "a.b-c", "0123456789abcdef") == \
        f"{RETAIN_REPO}/p_1.a.b-c:target-0123456789ab"


def test_ensure_tagged_tags_an_image_that_is_here() -> None:
    platform = FakePlatform(images={"web:1": OLD})
    ref = common.ensure_tagged(platform, "shop", "web", OLD)
    assert ref == common.target_ref("shop", "web", OLD)
    assert platform.calls == [("image", OLD), ("tag", OLD, ref)]
    assert platform.images[ref] == OLD


def test_ensure_tagged_refuses_an_image_that_is_gone() -> None:
    platform = FakePlatform(images={"web:1": NEW})
    with pytest.raises(NotFoundError) as err:
        common.ensure_tagged(platform, "shop", "web", OLD)
    assert err.value.message == f"image {OLD[:19]} of web is no longer on this host"
    assert err.value.fix is not None and "without a rebuild" in err.value.fix
    assert "another release" in err.value.fix
    assert platform.called("tag") == []


# --------------------------------------------------------------------- compose_file_image


def test_the_compose_file_image_is_the_named_image_or_the_built_one() -> None:
    platform = FakePlatform(images={"web:2": NEW, "shop-worker": OLD})
    assert common.compose_file_image(platform, {"image": "web:2"}, "shop", "web") == NEW
    # no image: compose names what it builds <project>-<service>
    assert common.compose_file_image(platform, {"build": "."}, "shop", "worker") == OLD
    assert common.compose_file_image(platform, {"image": ""}, "shop", "worker") == OLD
    assert common.compose_file_image(platform, {"image": "web:9"}, "shop", "web") is None
    assert platform.called("image") == [("web:2",), ("shop-worker",), ("shop-worker",),
                                        ("web:9",)]


# ---------------------------------------------------------------------------- require_yes


def test_yes_asks_nobody() -> None:
    asked: list[str] = []
    common.require_yes(True, False, asked.append, "sure?")
    common.require_yes(True, True, asked.append, "sure?")
    assert asked == []


def test_without_a_terminal_nothing_changes_without_yes() -> None:
    asked: list[str] = []
    with pytest.raises(UsageError) as err:
        common.require_yes(False, False, asked.append, "sure?")
    assert err.value.message == ("refusing to change anything without confirmation: "
                                 "no terminal to ask")
    assert err.value.fix == "pass --yes (or --dry-run to see the plan)"
    assert asked == []


def test_the_operator_is_asked_the_question_and_a_no_changes_nothing() -> None:
    asked: list[str] = []

    def answer(value: bool) -> Any:
        def confirm(question: str) -> bool:
            asked.append(question)
            return value
        return confirm

    common.require_yes(False, True, answer(True), "roll back web?")
    with pytest.raises(UsageError) as err:
        common.require_yes(False, True, answer(False), "roll back db?")
    assert err.value.message == "not confirmed; nothing changed"
    assert asked == ["roll back web?", "roll back db?"]
    assert err.value.exit_code == ExitCode.USAGE == 2
