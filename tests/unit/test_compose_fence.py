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
        "the container to fence has an IPv6 address (only IPv4 is fenced)"
    assert plat.fence(["ngx"], ["gone"], label="l") == "the container to fence has no address (left)"
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


# -- the hold's word of a starting container (start_beside's on_join) ----------------


class Stream:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events, self.closed = events, False

    def __iter__(self) -> Any:
        return iter(self.events)

    def close(self) -> None:
        self.closed = True


class JoinEngine(Engine):
    """Network connect events, the stack's containers as listed, each network's
    members: what _joins reads while Compose starts the new container."""

    def __init__(self, events: list[dict[str, Any]], listed: list[dict[str, Any]],
                 members: dict[str, dict[str, list[str]]]) -> None:
        super().__init__()
        self.stream = Stream(events)
        self.listed, self.members = listed, members
        self.filters: list[Any] = []

    def events(self, filters: Any) -> Stream:
        self.filters.append(filters)
        return self.stream

    def list_containers(self, _labels: Any) -> list[dict[str, Any]]:
        return self.listed

    def network_addresses(self, network_id: str, container_id: str) -> list[str]:
        return self.members.get(network_id, {}).get(container_id, [])


def connect(network: str, container: str) -> dict[str, Any]:
    return {"Type": "network", "Action": "connect",
            "Actor": {"ID": network, "Attributes": {"container": container, "name": network}}}


def test_a_starting_container_is_told_on_each_network_it_joins(tmp_path: Path) -> None:
    plat = platform_for_looks(tmp_path)
    plat._project = "p"  # as Compose named it (not asked of it here)
    web = {"com.docker.compose.project": "p", "com.docker.compose.service": "web"}
    engine = JoinEngine(
        [connect("n1", "old"), connect("n1", "job"), connect("n1", "db"),
         connect("n3", "new"), connect("n1", "new"), connect("n2", "new")],
        [{"Id": "old", "Labels": web}, {"Id": "new", "Labels": web},
         {"Id": "job", "Labels": {**web, "com.docker.compose.oneoff": "True"}}],
        # n3 does not list it yet: nothing told for n3
        {"n1": {"new": ["172.18.0.9"]}, "n2": {"new": ["172.19.0.4"]}, "n3": {}})
    plat.engine = engine  # type: ignore[assignment]
    told: set[str] = set()
    heard: list[tuple[str, list[str]]] = []
    with plat._joins("web", {"old"}, lambda cid, a: heard.append((cid, list(a))), told):
        pass
    # the running one, a one-off job and another service's container are not it
    assert heard == [("new", ["172.18.0.9"]), ("new", ["172.19.0.4"])]
    assert told == {"new"} and engine.stream.closed
    assert engine.filters == [{"type": ["network"], "event": ["connect"]}]


def test_a_failure_of_the_callers_word_is_raised_in_its_thread(tmp_path: Path) -> None:
    plat = platform_for_looks(tmp_path)
    plat._project = "p"  # as Compose named it (not asked of it here)
    web = {"com.docker.compose.project": "p", "com.docker.compose.service": "web"}
    plat.engine = JoinEngine([connect("n1", "new")], [{"Id": "new", "Labels": web}],  # type: ignore[assignment]
                             {"n1": {"new": ["172.18.0.9"]}})

    def broken(_cid: str, _a: Any) -> None:
        raise ExternalError("iptables: the xtables lock is held")

    with pytest.raises(ExternalError, match="xtables"), \
            plat._joins("web", set(), broken, set()):
        pass


def test_the_fence_of_a_starting_container_takes_the_addresses_it_is_given(
        tmp_path: Path, fences: Fences) -> None:
    plat = platform(tmp_path, NGINX)  # the new one is not inspected: its start holds it
    assert plat.fence(["ngx"], ["new"], label="backout-op-7-new",
                      addresses=["172.18.0.9", "172.18.0.9"]) is None
    assert fences.up == [(4242, ("172.18.0.9",), "backout-op-7-new")]


def test_an_engine_that_does_not_describe_the_joining_container_leaves_it_to_the_caller(
        tmp_path: Path) -> None:
    plat = platform_for_looks(tmp_path)
    plat._project = "p"
    web = {"com.docker.compose.project": "p", "com.docker.compose.service": "web"}
    engine = JoinEngine([connect("n1", "new")], [{"Id": "new", "Labels": web}], {})

    def no_answer(_network: str, _container: str) -> list[str]:
        raise ExternalError("Docker Engine API GET /networks/n1: 500 oops")

    engine.network_addresses = no_answer  # type: ignore[method-assign]
    plat.engine = engine  # type: ignore[assignment]
    told: set[str] = set()
    heard: list[str] = []
    with plat._joins("web", set(), lambda cid, _a: heard.append(cid), told):
        pass
    assert heard == [] and told == set()  # start_beside tells it late
