"""Run the benchmarks of issue 7 on a fresh copy of the test stack.

    uv run python -m bench                    # moderate sizes, 3 repetitions
    uv run python -m bench --smoke            # smallest sizes, 1 repetition (CI)
    uv run python -m bench --only backups --mysql-mb 100,1000 --redis-keys 1000000
    uv run python -m bench --only backups --pg-mb 100,1000
    uv run python -m bench --only monitor_overhead --monitor-services 20
    uv run python -m bench --out DIR          # results.json + results.md (default bench/results)

The stack gets a unique compose project; everything it creates carries the test
run label, so it is removed at the end, on Ctrl-C / SIGTERM, and by the next run's
sweep (tests.support.stack.cleanup_stale) after a crash.
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.benchmarks import BENCHMARKS, Params, build_v2, log  # noqa: E402
from bench.core import JsonDict, Rig  # noqa: E402
from tests.support.stack import TestStack, cleanup_stale  # noqa: E402

# monitor_services: the stack and one service more, so that the grown-stack path of
# bench 6 runs in CI too.
SMOKE = Params(reps=1, mysql_mb=[4.0], redis_keys=[20_000], mongo_docs=[500], pg_mb=[4.0],
               monitor_seconds=6, monitor_services=["+1"], rule_for=6, window=6, interval=2,
               tail=3.0)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _strs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="smallest sizes, 1 repetition, short monitor runs (what CI runs)")
    ap.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                    help="directory for results.json and results.md (default: bench/results)")
    ap.add_argument("--reps", type=int, help="repetitions per figure (default 3; smoke 1)")
    ap.add_argument("--mysql-mb", type=_floats,
                    help="MySQL dump sizes in MB, comma-separated (default 100; smoke 4; "
                         "the issue's full set: 100,1000,3000)")
    ap.add_argument("--redis-keys", type=_ints,
                    help="Redis key counts (default 1000000; smoke 20000; full: 1000000,10000000)")
    ap.add_argument("--pg-mb", type=_floats,
                    help="PostgreSQL dump sizes in MB (default 100; smoke 4; the issue's set: "
                         "100,1000)")
    ap.add_argument("--mongo-docs", type=_ints,
                    help="documents in the MongoDB stand-in (default 10000; smoke 500)")
    ap.add_argument("--monitor-seconds", type=float,
                    help="how long each monitor overhead run watches (default 60; smoke 6)")
    ap.add_argument("--monitor-services", type=_strs,
                    help="also measure the monitor with the stack grown to these service "
                         "counts, or by +N services, comma-separated (default none; smoke "
                         "+1; the issue's: 20)")
    ap.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    return ap.parse_args(argv)


def params(args: argparse.Namespace) -> Params:
    p = SMOKE if args.smoke else Params()
    p = Params(**vars(p))
    for name in ("reps", "mysql_mb", "redis_keys", "mongo_docs", "pg_mb", "monitor_seconds",
                 "monitor_services"):
        value = getattr(args, name)
        if value is not None:
            setattr(p, name, value)
    p.mysql_mb = sorted(p.mysql_mb)
    p.redis_keys = sorted(p.redis_keys)
    p.mongo_docs = sorted(p.mongo_docs)
    p.pg_mb = sorted(p.pg_mb)
    p.v2_tag = f"bench-v2-{os.getpid()}"
    if p.reps < 1 or not p.mysql_mb or not p.redis_keys or not p.mongo_docs or not p.pg_mb:
        raise SystemExit("python -m bench: --reps must be >= 1 and every size list non-empty")
    return p


def _out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()
    except OSError:
        return "?"


def machine() -> str:
    pretty = "Linux"
    osr = Path("/etc/os-release")
    if osr.exists():
        for line in osr.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip('"')
    mem = 0.0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) / 1024 / 1024
    docker = _out(["docker", "version", "--format", "{{.Server.Version}}"])
    compose = _out(["docker", "compose", "version", "--short"])
    return (f"{os.cpu_count()} cores ({platform.machine()}), {mem:.0f} GiB, {pretty}, "
            f"kernel {platform.release()}, Docker Engine {docker}, Compose {compose}")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that removes the stack


def byte_compile() -> list[str]:
    """Byte-compile backout and the packages it runs with, as an installer does (pip
    compiles at install, `uv sync --compile-bytecode`): every timed `backout` is a
    fresh process, and with PYTHONDONTWRITEBYTECODE set (this machine sets it) and no
    .pyc on disk each one compiled its 59 modules again, 0.1 s that no installed
    backout pays and the bare commands never do. Returns the directories compiled."""
    import backout

    dirs = [str(Path(backout.__file__).parent),
            *sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})]
    for d in dirs:
        compileall.compile_dir(d, quiet=1, workers=0)
    return dirs


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    p = params(args)
    names = args.only or list(BENCHMARKS)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started = time.monotonic()
    swept = cleanup_stale() + _sweep_v2_tags()
    if swept:
        log(f"removed leftovers of crashed runs: {', '.join(swept)}")
    compiled = byte_compile()
    base = Path(tempfile.mkdtemp(prefix="backout-bench-"))
    stack = TestStack.create(base, env={"WRITE_INTERVAL": "0"})
    results: JsonDict = {
        "meta": {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "uv run python -m bench " + shlex.join(sys.argv[1:] if argv is None
                                                              else argv),
            "backout_commit": _out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
            "smoke": bool(args.smoke), "reps": p.reps, "params": vars(p),
            "byte_compiled": compiled,
            "project": stack.project_name, "wall_seconds": 0.0,
        },
        "benchmarks": {},
    }
    failed = 0
    try:
        log(f"stack {stack.project_name} in {stack.project_dir}")
        stack.build_images()
        stack.up()
        stack.seed()
        rig = Rig(stack, base / "scratch")
        rig.backout("init")
        rig.init_toml = (stack.project_dir / "backout.toml").read_text()
        rig.write_config()
        rig.backout("release", "record", "--note", "bench: healthy")
        build_v2(p.v2_tag)
        for name in names:
            log(f"=== {name}")
            t0 = time.monotonic()
            try:
                outcome = BENCHMARKS[name](rig, p)
            except Exception as exc:
                failed += 1
                traceback.print_exc()
                outcome = {"title": name, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                _recover(rig)
            outcome["seconds"] = round(time.monotonic() - t0, 1)
            results["benchmarks"][name] = outcome
    finally:
        results["meta"]["wall_seconds"] = round(time.monotonic() - started, 1)
        if results["benchmarks"]:
            js, md = report.write(results, args.out)
            log(f"wrote {js} and {md}")
        if args.keep:
            log(f"--keep: the stack stays up in {stack.project_dir}")
        else:
            stack.down()
            shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["docker", "image", "rm", f"backout-test/backend:{p.v2_tag}"],
                       capture_output=True, check=False, timeout=120)
    log(f"done in {results['meta']['wall_seconds']:.0f} s" + (f"; {failed} benchmark(s) failed"
                                                             if failed else ""))
    return 1 if failed else 0


def _sweep_v2_tags() -> list[str]:
    """The second backend image of crashed runs (tag bench-v2-<pid> of a dead pid)."""
    tags = _out(["docker", "image", "ls", "backout-test/backend", "--format", "{{.Tag}}"])
    gone = []
    for tag in tags.split():
        pid = tag.removeprefix("bench-v2-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["docker", "image", "rm", f"backout-test/backend:{tag}"],
                           capture_output=True, check=False, timeout=120)
            gone.append(f"backout-test/backend:{tag}")
    return gone


def _recover(rig: Rig) -> None:
    """After a failed benchmark: the default config and the stack as main says."""
    try:
        rig.write_config()
        rig.back_to_main()
    except Exception:
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
