"""The README's main job until `backout demo` exists: the runbook's scenarios,
narrated, on a fresh copy of the test stack. Removes everything afterwards
unless KEEP=1. Exits non-zero if any step does not behave as narrated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backout.adapters import http  # noqa: E402
from tests.support.stack import TestStack, cleanup_stale, wait_for  # noqa: E402


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def backout(stack: TestStack, *args: str, expect: int = 0) -> dict[str, Any]:
    shown = " ".join(args)
    print(f"$ backout {shown}", flush=True)
    result = subprocess.run([sys.executable, "-m", "backout", *args, "--json"],
                            cwd=stack.project_dir, capture_output=True, text=True, timeout=900,
                            check=False)
    data = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    if result.returncode != expect:
        print(result.stderr, file=sys.stderr)
        if data.get("failed"):
            print("failed checks:", [c for c in data["checks"] if not c["ok"]],
                  file=sys.stderr)
        raise SystemExit(f"try-it: `backout {shown}` exited {result.returncode}, expected {expect}")
    return data


def error_share(url: str, n: int = 40) -> float:
    errors = 0
    for _ in range(n):
        try:
            http.urlopen(url, timeout=10).read()
        except urllib.error.HTTPError:
            errors += 1
    return errors / n


def main() -> int:
    keep = os.environ.get("KEEP") == "1"
    cleanup_stale()
    stack = TestStack.create(Path(tempfile.mkdtemp(prefix="backout-try-")))
    try:
        say("build and start the test stack (nginx, backend, frontend, model-server, "
            "MariaDB, Redis, MongoDB stand-in)")
        stack.build_images()
        stack.up()
        stack.seed()
        print(f"project {stack.project_name} in {stack.project_dir}")
        api = f"{stack.url('nginx')}/api/v1/items"

        say("backout init: a commented backout.toml derived from the compose project")
        backout(stack, "init")
        backout(stack, "config", "check")

        say("checkpoint before the deploy: release + verified backups of all three databases")
        cp = backout(stack, "checkpoint", "--label", "before the v2 deploy")
        print(f"checkpoint {cp['checkpoint_id']}, backup set {cp['set_id']}")

        say("a bad deploy, by hand: backend v2 answers 60% of API calls with HTTP 500")
        stack.set_image_tag("backend", "errors")
        stack.compose("up", "-d", "--wait", "backend")
        print(f"error share through nginx: {error_share(api):.0%}")

        say("runbook scenario 3, one command: roll the backend back (others untouched)")
        backout(stack, "rollback", "service", "backend", "--yes")
        share = error_share(api)
        print(f"error share through nginx: {share:.0%}")
        if share > 0.05:
            raise SystemExit("try-it: the backend still fails after the rollback")

        say("runbook scenario 2: a migration destroys data; restore MySQL from the checkpoint")
        stack.compose("stop", "backend", "frontend", "model-server")
        before = stack.mysql_scalar("SELECT COUNT(*) FROM customers")
        stack.mysql_query("DELETE FROM customers")
        print(f"customers: {before} -> 0 after the bad migration")
        rb = backout(stack, "rollback", "db", "mysql", f"cp{cp['checkpoint_id']}", "--yes")
        after = stack.mysql_scalar("SELECT COUNT(*) FROM customers")
        print(f"customers after `rollback db`: {after} (safety backup {rb['safety_set']})")
        if after != before:
            raise SystemExit("try-it: the restore did not bring the rows back")
        # `start`, not `up`: `up` would recreate the backend from the compose file's
        # (still broken) image and undo the service rollback; backout warned about that.
        writers = ("backend", "frontend", "model-server")
        stack.compose("start", *writers)
        wait_for(lambda: all(stack.health(s) == "healthy" for s in writers), timeout=120,
                 message="writers healthy again")

        say("verify: containers, health URLs, logs, databases, images")
        result = backout(stack, "verify", "--settle", "5")
        for check in result["checks"]:
            print(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")

        say("history")
        for op in backout(stack, "history")["operations"]:
            print(f"  #{op['id']} {op['kind']}: {op['status']} ({op['duration_s']:.1f}s)")
        return 0
    finally:
        if keep:
            print(f"\nKEEP=1: the stack stays up in {stack.project_dir} "
                  f"(docker compose -p {stack.project_name} down -v to remove it)")
        else:
            stack.down()


if __name__ == "__main__":
    sys.exit(main())
