"""The benchmark harness (bench/, issue 7) keeps working: its smoke run (smallest
sizes, one repetition) finishes and writes every benchmark with the expected keys
and sane values. Benchmarks are not tests: no figure is compared with a target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.benchmarks import BENCHMARKS, RESTORE_SESSIONS

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {"name", "unit", "backout", "baseline", "baseline_label", "kind", "ratio",
            "ratio_meaning", "floor", "extra"}
STAT_KEYS = {"median", "min", "max", "n", "runs"}


def check_stats(figure: dict[str, Any], where: str) -> None:
    assert set(figure) == STAT_KEYS, where
    assert figure["n"] == len(figure["runs"]) >= 1, where
    assert all(isinstance(v, (int, float)) and v >= 0 for v in figure["runs"]), where
    assert figure["min"] <= figure["median"] <= figure["max"], where


def test_bench_smoke_writes_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stderr[-6000:]
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["smoke"] is True and data["meta"]["reps"] == 1
    assert "cores" in data["meta"]["machine"] and data["meta"]["wall_seconds"] > 0
    assert list(data["benchmarks"]) == list(BENCHMARKS)
    for name, bench in data["benchmarks"].items():
        assert "error" not in bench, (name, bench.get("error"))
        assert bench["title"] and bench["rows"], name
        for row in bench["rows"]:
            where = f"{name}: {row.get('name')}"
            assert set(row) == ROW_KEYS, where
            check_stats(row["backout"], where)
            if row["baseline"] is not None:
                check_stats(row["baseline"], where)
                assert row["baseline_label"], where
            if row["kind"] in ("lower", "higher") and row["baseline"] is not None \
                    and row["baseline"]["median"] > 0:
                assert row["ratio"] is not None and row["ratio"] > 0, where
            if row["floor"] is not None:
                assert row["floor"]["value"] > 0 and row["floor"]["label"], where
    # every benchmark pairs at least one backout figure with a baseline
    for name, bench in data["benchmarks"].items():
        assert any(r["baseline"] for r in bench["rows"]), name
    # failure counts are whole numbers
    gap = data["benchmarks"]["requests_during_rollback"]["rows"][0]["extra"]
    for key in ("backout_failed", "baseline_failed", "backout_requests", "baseline_requests"):
        assert gap[key] and all(isinstance(v, int) and v >= 0 for v in gap[key]), key
    assert all(r > 0 for r in gap["backout_requests"])
    # where each longest stretch began, and for a deploy whether inside its switch
    stretches = [r["extra"] for r in data["benchmarks"]["requests_during_rollback"]["rows"]
                 if "longest stretch" in r["name"]]
    assert stretches and all(len(e["longest_at_s"]) == 1 for e in stretches)
    deploys = [e for e in stretches if "switch_s" in e]
    assert deploys and all(0 < e["switch_s"][0][0] < e["switch_s"][0][1] < e["seconds"][0]
                           and isinstance(e["in_the_switch"][0], bool) for e in deploys)
    e2e = data["benchmarks"]["end_to_end_recovery"]["rows"][0]["extra"]
    assert all(isinstance(v, int) and v >= 0 for v in e2e["failed_requests"])
    backups = [r["name"] for r in data["benchmarks"]["backups"]["rows"]]
    for needle in ("MySQL", "Redis", "MongoDB STAND-IN", "PostgreSQL"):
        assert any(needle in n for n in backups), needle
    # the MySQL restore's floor: the same dump loaded bare over parallel sessions
    restore = next(r for r in data["benchmarks"]["backups"]["rows"]
                   if r["name"].startswith("MySQL") and "restore step" in r["name"])
    parallel = restore["extra"]["bare_parallel_load"]
    assert parallel["sessions"] >= 2 and parallel["mb_s"] > 0
    assert [t["sessions"] for t in parallel["tried"]] == [RESTORE_SESSIONS, RESTORE_SESSIONS + 1]
    assert parallel["mb_s"] == max(t["mb_s"] for t in parallel["tried"])
    assert "loaded bare by" in restore["floor"]["label"]
    # bench 6 at the stack's size and grown by one service (--monitor-services in smoke)
    sized = [r["extra"] for r in data["benchmarks"]["monitor_overhead"]["rows"]
             if r["extra"].get("services")]
    assert [e["services"] for e in sized] == [sized[0]["services"], sized[0]["services"] + 1]
    assert isinstance(sized[1]["cpu_s_per_min_per_added_service"], float)
    # one evaluation, the monitor's own and the bare loop's, at both sizes
    evals = [r for r in data["benchmarks"]["monitor_overhead"]["rows"]
             if "evaluation" in r["name"]]
    assert len(evals) == 2
    assert all(0 < v < 60 for r in evals for v in (*r["backout"]["runs"],
                                                    *r["baseline"]["runs"]))
    md = (out / "results.md").read_text()
    for bench in data["benchmarks"].values():
        assert bench["title"] in md
