"""The bench's backup rounds (bench/benchmarks.py `rounds`) turn which command goes
first round by round, and give each command's MB/s by its own round's size and its own
seconds, wherever it ran in the round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from bench.benchmarks import MB, Params, rounds, turn, with_startup
from bench.core import Timed


def test_turn_rotates_and_keeps_the_order() -> None:
    names = ["backout", "bare", "proven"]
    assert [turn(names, i) for i in range(4)] == [
        ["backout", "bare", "proven"], ["bare", "proven", "backout"],
        ["proven", "backout", "bare"], ["backout", "bare", "proven"]]
    assert turn(["a", "b"], 1) == ["b", "a"]


class FakeRig:
    """What `rounds` asks of a Rig: each command's seconds are scripted, and the order
    of the timed commands (a `settle` before each) is recorded."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.log: list[str] = []
        self.round = 0

    def settle(self) -> None:
        self.log.append("settle")

    def backout(self, *args: str) -> Timed:
        if args[-1] == "--dry-run":
            self.log.append("dry run")
            return Timed(0.25, 0, "{}", "")
        if args[0] == "backup":
            self.log.append("backout backup")
            op = 100 + self.round
            out = {"set_id": f"set{self.round}", "operation_id": op}
            return Timed(2.0 + self.round, 0, json.dumps(out), "")
        assert args[:3] == ("rollback", "db", "mysql")
        self.log.append(f"backout restore {args[3]}")
        return Timed(8.0, 0, json.dumps({"operation_id": 200 + self.round}), "")

    def manifest(self, set_id: str) -> dict[str, Any]:
        # the size grows round by round (the app writes between rounds): each set's own
        return {"artifacts": {"mysql.sql.zst": {"raw_bytes": (10 + int(set_id[3:])) * MB}}}

    def step_seconds(self, operation_id: int, step: str) -> float:
        return {"dump mysql": 1.0, "restore mysql": 4.0}.get(step, 0.5)

    def sh(self, script: str, *, env: dict[str, str] | None = None) -> Timed:
        self.log.append(script)
        if script.startswith("LOAD"):
            self.round += 1  # the next backups' sizes and times are the next round's
        return Timed({"DUMP": 5.0, "PROVEN": 10.0, "LOAD": 2.0}.get(script, 1.0), 0, "", "")

    def writers(self, db: str) -> list[str]:
        return ["app"]


def test_rounds_turn_the_order_and_keep_each_figure_with_its_round(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.benchmarks.log", lambda *_: None)
    rig = FakeRig(tmp_path)
    p = cast(Params, type("P", (), {"reps": 3})())
    r = rounds(cast(Any, rig), p, "mysql", "mysql.sql.zst", "DUMP", "LOAD",
               {"MYSQL_PWD": "s"}, "MySQL", proven_dump="PROVEN")
    # every timed command starts after a settle (the writers' stop and start are not timed)
    untimed = ("settle", "docker compose")
    for before, command in zip(rig.log, rig.log[1:], strict=False):
        if not command.startswith(untimed) and command != "LOAD":
            assert before == "settle", (before, command)
    timed = [c for c in rig.log if not c.startswith(untimed)]
    assert timed == [
        "backout backup", "DUMP", "PROVEN", "dry run", "backout restore set0", "LOAD",
        "DUMP", "PROVEN", "backout backup", "dry run", "LOAD", "backout restore set1",
        "PROVEN", "backout backup", "DUMP", "dry run", "backout restore set2", "LOAD"]
    assert r.startup_s == [0.25] * 3
    assert r.first_backup == ["backout", "bare", "proven"]
    assert r.first_restore == ["backout", "bare", "backout"]
    # a settle before each timed command: 3 backups, the dry run and 2 restores a round
    assert rig.log.count("settle") == 3 * 6
    # each round's MB/s by that round's own size (10, 11, 12 MB: read from backout's
    # backup, even where the bare pipes ran before it)
    assert r.backup_s == [2.0, 3.0, 4.0]
    assert r.backup == pytest.approx([10 / 2.0, 11 / 3.0, 12 / 4.0])
    assert r.bare_backup == pytest.approx([10 / 5.0, 11 / 5.0, 12 / 5.0])
    assert r.proven_backup == pytest.approx([10 / 10.0, 11 / 10.0, 12 / 10.0])
    assert r.dump_step == pytest.approx([10.0, 11.0, 12.0])
    # the proven pipe's median (11 MB in 10 s) with the start-up added, at the last size
    assert with_startup(r) == pytest.approx(12 / (12 / 1.1 + 0.25))
    assert r.restore_step == pytest.approx([10 / 4.0, 11 / 4.0, 12 / 4.0])
    assert r.bare_restore == pytest.approx([10 / 2.0, 11 / 2.0, 12 / 2.0])
    assert r.restore_whole == pytest.approx([10 / 8.0, 11 / 8.0, 12 / 8.0])
    # the bare whole restore: stop (1 s) + load (2 s) + start (1 s)
    assert r.bare_restore_whole == pytest.approx([10 / 4.0, 11 / 4.0, 12 / 4.0])
