"""The Compose platform's fence (issue 14's drain): which addresses it fences in
which namespaces, why it cannot (a remote engine, no root, nothing to fence, no
proxy running, a process ID that is not the container's) with nothing changed, and
that a take-down it cannot do raises instead of passing over the rules.
In-process: the engine's inspect documents and netfence are stand-ins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backout.errors import CommandFailedError, ExternalError
from backout.platforms import compose as compose_platform
from backout.platforms.compose import ComposePlatform
from tests.support.enginelooks import platform_for_looks

OLD = {"Id": "old", "State": {"Pid": 0},
       "NetworkSettings": {"Networks": {"p_default": {"IPAddress": "172.18.0.8",
                                                      "GlobalIPv6Address": ""},
                                        "p_back": {"IPAddress": "172.19.0.3"}}}}
OLD6 = {"Id": "old6", "State": {"Pid": 0},
        "NetworkSettings": {"Networks": {"p_v6": {"IPAddress": "172.20.0.3",
                                                  "GlobalIPv6Address": "fd00::3"}}}}
NGINX = {"Id": "ngx", "State": {"Pid": 4242}, "NetworkSettings": {"Networks": {}}}
NGINX2 = {"Id": "ngx2", "Name": "/nginx-2", "State": {"Pid": 4343},
          "NetworkSettings": {"Networks": {}}}
STOPPED = {"Id": "ngx3", "State": {"Pid": 0}, "NetworkSettings": {"Networks": {}}}


class Engine:
    def __init__(self, *docs: dict[str, Any]) -> None:
        self.docs = {d["Id"]: d for d in docs}

    def inspect_containers(self, ids: list[str]) -> list[dict[str, Any]]:
        return [self.docs[i] for i in ids if i in self.docs]


class Fences:
    def __init__(self, fail_at: int | None = None) -> None:
        self.up: list[tuple[int, tuple[str, ...], str]] = []
        self.down: list[tuple[int, str]] = []
        self.fail_at = fail_at

    def put_up(self, _env: Any, pid: int, addresses: list[str], label: str) -> None:
        if pid == self.fail_at:
            raise CommandFailedError("iptables: Chain 'OUTPUT' does not exist")
        self.up.append((pid, tuple(addresses), label))

    def take_down(self, _env: Any, pid: int, label: str) -> int:
        self.down.append((pid, label))
        return sum(1 for p, _a, lab in self.up if p == pid and lab == label)


@pytest.fixture
def fences(monkeypatch: pytest.MonkeyPatch) -> Fences:
    f = Fences()
    monkeypatch.setattr(compose_platform.netfence, "put_up", f.put_up)
    monkeypatch.setattr(compose_platform.netfence, "take_down", f.take_down)
    monkeypatch.setattr(compose_platform.netfence, "unavailable", lambda: None)
    # each proxy's own process: the container ID goes with its process ID
    mains = {4242: "ngx", 4343: "ngx2"}
    monkeypatch.setattr(compose_platform.netfence, "foreign",
                        lambda pid, cid: None if mains.get(pid) == cid else f"not {cid}'s")
    return f


def platform(tmp_path: Path, *docs: dict[str, Any]) -> ComposePlatform:
    plat = platform_for_looks(tmp_path)
    plat.engine = Engine(*docs)  # type: ignore[assignment]
    return plat


def test_every_address_of_the_old_container_in_every_running_proxy(
        tmp_path: Path, fences: Fences) -> None:
    plat = platform(tmp_path, OLD, NGINX, NGINX2, STOPPED)
    assert plat.fence(["ngx", "ngx2", "ngx3"], ["old"], label="backout-op-7") is None
    addresses = ("172.18.0.8", "172.19.0.3")
    assert fences.up == [(4242, addresses, "backout-op-7"), (4343, addresses, "backout-op-7")]
    assert plat.unfence(["ngx", "ngx2", "ngx3"], label="backout-op-7") == 2
    assert fences.down == [(4242, "backout-op-7"), (4343, "backout-op-7")]


def test_what_cannot_be_fenced_says_why_and_changes_nothing(
        tmp_path: Path, fences: Fences, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = platform_for_looks(tmp_path)  # DOCKER_HOST=ssh://...: no local engine
    assert "not on this host" in (remote.fence_problem() or "")
    assert "not on this host" in (remote.fence(["ngx"], ["old"], label="l") or "")
    with pytest.raises(ExternalError, match="cannot take fences down: the Docker Engine"):
        remote.unfence(["ngx"], label="l")
    plat = platform(tmp_path, OLD, OLD6, NGINX, STOPPED)
    assert plat.fence_problem() is None
    assert plat.fence(["ngx"], ["old6"], label="l") == \
        "the old container has an IPv6 address (only IPv4 is fenced)"
    assert plat.fence(["ngx"], ["gone"], label="l") == "the old container has no address left"
    assert plat.fence(["ngx3"], ["old"], label="l") == "no proxy container in front is running"
    monkeypatch.setattr(compose_platform.netfence, "unavailable",
                        lambda: "backout is not running as root")
    assert plat.fence_problem() == "backout is not running as root"
    assert plat.fence(["ngx"], ["old"], label="l") == "backout is not running as root"
    with pytest.raises(ExternalError, match="not running as root"):
        plat.unfence(["ngx"], label="l")
    assert fences.up == [] and fences.down == []


def test_a_process_id_that_is_not_the_containers_is_refused(
        tmp_path: Path, fences: Fences, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose_platform.netfence, "foreign", lambda pid, cid: (
        "it shares this host's network namespace (network_mode: host)" if pid == 4343
        else None))
    plat = platform(tmp_path, OLD, NGINX, NGINX2)
    assert plat.fence(["ngx", "ngx2"], ["old"], label="l") == \
        "nginx-2: it shares this host's network namespace (network_mode: host)"
    assert fences.up == []  # every proxy looked at before the first rule
    assert plat.unfence(["ngx", "ngx2"], label="l") == 0  # never one there
    assert fences.down == [(4242, "l")]


def test_a_rule_that_cannot_be_put_up_raises(tmp_path: Path, fences: Fences) -> None:
    fences.fail_at = 4343
    plat = platform(tmp_path, OLD, NGINX, NGINX2)
    with pytest.raises(CommandFailedError, match="Chain 'OUTPUT' does not exist"):
        plat.fence(["ngx", "ngx2"], ["old"], label="backout-op-7")
    assert [p for p, _a, _l in fences.up] == [4242]  # the drain's take-down clears it
