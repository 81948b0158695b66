"""The fence of issue 14's drain (backout.adapters.netfence): the rules it adds in a
proxy's network namespace, added once however often a resumed run asks, and taken
down by their tag alone, nothing else touched; a rule list it cannot read where the
namespace is raises. The real iptables in a real nginx's namespace:
tests/integration/test_switch.py."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from backout import proc
from backout.adapters import netfence
from backout.environment import Environment
from backout.errors import CommandFailedError, ExternalError


class Tables:
    """iptables -C/-I/-D/-S over one namespace's OUTPUT chain, as argv."""

    def __init__(self) -> None:
        self.rules: list[list[str]] = []
        self.calls: list[list[str]] = []

    def run(self, _env: Any, argv: list[str], **kw: Any) -> proc.Result:
        self.calls.append(list(argv))
        assert argv[:4] == ["nsenter", "--target=42", "--net", "--"]
        tool, wait, seconds, op, chain, *spec = argv[4:]
        assert (tool, wait, seconds, chain) == ("iptables", "-w", netfence.LOCK_WAIT, "OUTPUT")
        rules = self.rules
        if op == "-S":
            out = "-P OUTPUT ACCEPT\n" + "".join(
                "-A OUTPUT " + " ".join(shlex.quote(w) for w in r) + "\n" for r in rules)
            return proc.Result(tuple(argv), 0, out, "", 0.0)
        if op == "-I":
            rules.insert(0, spec)
        elif op == "-D":
            rules.remove(spec)
        elif op == "-C":
            rc = 0 if spec in rules else 1
            if rc and kw.get("check", True):
                raise CommandFailedError("no such rule")
            return proc.Result(tuple(argv), rc, "", "", 0.0)
        return proc.Result(tuple(argv), 0, "", "", 0.0)


@pytest.fixture
def tables(monkeypatch: pytest.MonkeyPatch) -> Tables:
    t = Tables()
    monkeypatch.setattr(netfence.proc, "run", t.run)
    monkeypatch.setattr(netfence.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    return t


def test_the_rule_refuses_new_tcp_connections_with_a_reset() -> None:
    assert netfence.rule("172.18.0.8", "backout-op-3") == [
        "-d", "172.18.0.8/32", "-p", "tcp", "--syn", "-m", "comment", "--comment",
        "backout-op-3", "-j", "REJECT", "--reject-with", "tcp-reset"]


def test_put_up_adds_each_address_once(tables: Tables) -> None:
    env = Environment()
    netfence.put_up(env, 42, ["172.18.0.8", "172.19.0.3"], "backout-op-3")
    netfence.put_up(env, 42, ["172.18.0.8", "172.19.0.3"], "backout-op-3")  # resumed
    assert tables.rules == [netfence.rule("172.19.0.3", "backout-op-3"),
                            netfence.rule("172.18.0.8", "backout-op-3")]
    assert [c[7] for c in tables.calls] == ["-C", "-I", "-C", "-I", "-C", "-C"]


def test_take_down_removes_only_its_own_tag(tables: Tables) -> None:
    env = Environment()
    netfence.put_up(env, 42, ["172.18.0.8", "172.19.0.3"], "backout-op-3")
    netfence.put_up(env, 42, ["172.18.0.9"], "backout-op-4")
    theirs = ["-d", "10.0.0.1/32", "-j", "DROP", "-m", "comment", "--comment", "backout-op-3x"]
    tables.rules.append(theirs)
    assert netfence.take_down(env, 42, "backout-op-3") == 2
    assert tables.rules == [netfence.rule("172.18.0.9", "backout-op-4"), theirs]
    assert netfence.take_down(env, 42, "backout-op-3") == 0


def test_take_down_in_a_namespace_that_is_gone_removes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netfence.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    monkeypatch.setattr(netfence.proc, "run", lambda _e, argv, **_k: proc.Result(
        tuple(argv), 1, "", "nsenter: cannot open /proc/4242424/ns/net: No such file", 0.0))
    assert netfence.take_down(Environment(), 4242424, "backout-op-3") == 0  # no such pid


def test_rules_that_cannot_be_listed_where_the_namespace_is_raise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a silent 0 for rules it could not see (a held lock, a failing nsenter)."""
    monkeypatch.setattr(netfence.proc, "run", lambda _e, argv, **_k: proc.Result(
        tuple(argv), 4, "", "Another app is currently holding the xtables lock", 0.0))
    with pytest.raises(ExternalError, match=r"iptables -S in process .* failed: Another app"):
        netfence.take_down(Environment(), os.getpid(), "backout-op-3")  # a namespace there


def test_a_rule_line_shlex_cannot_split_is_not_ours(tables: Tables) -> None:
    tables.rules.append(["-m", "comment", "--comment", "'backout-op-3"])
    assert netfence.take_down(Environment(), 42, "backout-op-3") == 0


def test_only_a_containers_own_namespace_is_fenced(tmp_path: Path) -> None:
    (tmp_path / "self" / "ns").mkdir(parents=True)
    (tmp_path / "self" / "ns" / "net").symlink_to("net:[4026531840]")
    (tmp_path / "77" / "ns").mkdir(parents=True)
    (tmp_path / "77" / "cgroup").write_text("0::/system.slice/docker-abc123.scope\n")
    (tmp_path / "77" / "ns" / "net").symlink_to("net:[4026532999]")
    assert netfence.foreign(77, "abc123", tmp_path) is None
    assert "not its main process" in (netfence.foreign(77, "def456", tmp_path) or "")
    (tmp_path / "77" / "ns" / "net").unlink()
    (tmp_path / "77" / "ns" / "net").symlink_to("net:[4026531840]")
    assert "network_mode: host" in (netfence.foreign(77, "abc123", tmp_path) or "")
    assert "cannot be looked at" in (netfence.foreign(78, "abc123", tmp_path) or "")


def test_unavailable_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netfence.os, "geteuid", lambda: 1000)
    assert "not running as root" in (netfence.unavailable() or "")
    monkeypatch.setattr(netfence.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netfence.shutil, "which",
                        lambda tool: None if tool == "nsenter" else "/usr/sbin/iptables")
    assert netfence.unavailable() == "nsenter is not installed"
    monkeypatch.setattr(netfence.shutil, "which", lambda tool: None)
    assert netfence.unavailable() == "nsenter and iptables are not installed"
    monkeypatch.setattr(netfence.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    assert netfence.unavailable() is None
