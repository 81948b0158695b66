"""backout on a real two-node Docker Swarm (tests/swarm/lab.sh): the stack of
tests/swarm/stack.yml with its database pinned to node 2, the app on both nodes
(start-first), a live writer on node 1.

The tests of this module run in order against one deployed stack (each leaves it
converged for the next); the lab is started once per session.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import assert_clean_error, backout, ok, ok_json
from tests.support.swarm import SwarmLab, SwarmStack, until

pytestmark = [pytest.mark.docker]

ACK = re.compile(r"ack-[0-9a-f]{12}-\d+")


@pytest.fixture(scope="module")
def swarm(swarm_lab: SwarmLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmStack]:
    stack = SwarmStack.create(swarm_lab, tmp_path_factory.mktemp("swarm"))
    stack.deploy()
    try:
        stack.wait_converged("db", "mariadb", 1)
        stack.wait_converged("redis", "redis", 1)
        stack.wait_converged("frontend", "frontend:healthy", 2)
        until(lambda: bool(acked(stack)), 120, "the writer's first acknowledged write")
        yield stack
    finally:
        stack.remove()


def run(stack: SwarmStack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return backout(*args, cwd=stack.project_dir, timeout=timeout)


def acked(stack: SwarmStack) -> list[str]:
    """Every write the writer saw acknowledged, in order (from its tasks' logs)."""
    out = stack.lab.docker("service", "logs", "--raw", f"{stack.name}_writer", check=False).stdout
    return [m.group(0) for line in out.splitlines() if line.startswith("ACK ")
            for m in [ACK.search(line)] if m]


def tokens_in(path: Path) -> set[str]:
    raw = subprocess.run(["zstd", "-d", "-q", "-c", str(path)], capture_output=True, check=True,
                         timeout=120).stdout.decode()
    return set(ACK.findall(raw))


def run_of(token: str) -> str:
    return token.rsplit("-", 1)[0]


def frontend_digests(stack: SwarmStack) -> set[str]:
    return {t["Image"].split("@")[-1] for t in stack.tasks("frontend")}


def test_status_release_and_verify_read_the_tasks_on_both_nodes(swarm: SwarmStack) -> None:
    nodes = {t["Node"] for t in swarm.tasks("frontend")} | {t["Node"] for t in swarm.tasks("db")}
    assert {t["Node"] for t in swarm.tasks("db")} == {"bolab2"}
    data = ok_json(run(swarm, "release", "record", "--json"))
    services = data["release"]["services"]
    healthy = swarm.digest_of("healthy")
    # every image pinned by digest; the digest is the registry's
    assert services["frontend"]["image"].endswith("@" + healthy)
    assert all("@sha256:" in svc["image"] for svc in services.values())
    assert set(services) == {"db", "redis", "frontend", "writer"}
    # retained in the cluster's registry under backout's own name (survives a tag move)
    retained = f"{swarm.lab.registry}/{services['frontend']['retained_as']}"
    assert any(d.startswith(retained.split(":release-")[0] + "@") for d in
               swarm.lab.docker("image", "inspect", "-f", "{{json .RepoDigests}}",
                                retained).stdout.split('"'))
    verify = ok_json(run(swarm, "verify", "--json"))
    names = {c["name"] for c in verify["checks"]}
    assert {"container frontend", "container db", "database main"} <= names
    status = ok_json(run(swarm, "status", "--json"))
    assert status["release"]["id"] == data["release"]["id"]
    assert nodes == {"bolab1", "bolab2"} or nodes == {"bolab2"}


def test_rollback_service_works_after_swarms_own_rollback(swarm: SwarmStack) -> None:
    """Swarm rolls an unhealthy image back by itself, then `docker service rollback`
    has no previous spec; backout's rollback goes to the recorded digest anyway and
    waits for the tasks, not for UpdateStatus."""
    first = ok_json(run(swarm, "release", "record", "--json"))["release"]["id"]
    svc = f"{swarm.name}_frontend"
    swarm.lab.docker("service", "update", "-q", "--image",
                     f"{swarm.lab.registry}/backout-test/frontend:errors", svc, timeout=300)
    swarm.wait_converged("frontend", "frontend:errors", 2)
    ok(run(swarm, "release", "record"))
    swarm.lab.docker("service", "update", "-d", "-q", "--update-failure-action", "rollback",
                     "--image", f"{swarm.lab.registry}/backout-test/frontend:unhealthy", svc)

    def state() -> str:
        return swarm.lab.docker("service", "inspect", "-f", "{{.UpdateStatus.State}}",
                                svc).stdout.strip()
    until(lambda: state() == "rollback_completed", 240, "Swarm's own rollback")
    refused = swarm.lab.docker("service", "rollback", svc, check=False)
    assert refused.returncode != 0 and "previous spec" in refused.stderr

    ok(run(swarm, "rollback", "service", "frontend", str(first), "--yes"))
    # backout returned only once the tasks were there: no wait here
    tasks = swarm.tasks("frontend")
    assert len(tasks) == 2 and all(t["CurrentState"].startswith("Running") for t in tasks)
    assert frontend_digests(swarm) == {swarm.digest_of("healthy")}
    assert len([c for n in (1, 2) for c in swarm.healthy_containers(n)]) >= 4
    ok(run(swarm, "verify"))


def test_rollback_service_undoes_a_paused_bad_update(swarm: SwarmStack) -> None:
    good = ok_json(run(swarm, "release", "record", "--json"))["release"]["id"]
    svc = f"{swarm.name}_frontend"
    swarm.lab.docker("service", "update", "-d", "-q", "--update-failure-action", "pause",
                     "--image", f"{swarm.lab.registry}/backout-test/frontend:unhealthy", svc)
    until(lambda: swarm.lab.docker("service", "inspect", "-f", "{{.UpdateStatus.State}}",
                                   svc).stdout.strip() == "paused", 240, "the update to pause")
    result = ok(run(swarm, "rollback", "service", "frontend", f"r{good}", "--yes"))
    assert "recreate frontend from image" in result.stderr
    assert frontend_digests(swarm) == {swarm.digest_of("healthy")}
    ok(run(swarm, "verify"))


def test_checkpoint_damage_rollback_db_on_node_2_with_a_live_writer(swarm: SwarmStack) -> None:
    before = len(acked(swarm))
    until(lambda: len(acked(swarm)) > before + 5, 60, "the writer writing")
    cp = ok_json(run(swarm, "checkpoint", "--json"))
    set_id = cp["set_id"]
    time.sleep(2)
    swarm.db_exec("DELETE FROM acks WHERE token LIKE 'ack-%-1'; CREATE TABLE junk (x INT);")
    result = ok_json(run(swarm, "rollback", "db", "main", set_id, "--yes", "--json"))
    acks_after = acked(swarm)
    live = set(swarm.db_exec("SELECT token FROM acks").split())
    assert "junk" not in swarm.db_exec("SHOW TABLES")
    backups = swarm.project_dir / ".backout" / "backups"
    checkpoint = tokens_in(backups / set_id / "main.sql.zst")
    safety_sets = [p.name for p in backups.iterdir() if p.name != set_id and
                   (p / "main.sql.zst").is_file() and p.stat().st_mtime > (backups / set_id).stat().st_mtime]
    assert len(safety_sets) == 1, safety_sets
    safety = tokens_in(backups / safety_sets[0] / "main.sql.zst")
    # the restore is exact: what the checkpoint has is live again
    assert checkpoint <= live
    # every acknowledged write is live or in the safety backup
    lost = [t for t in acks_after if t not in live and t not in safety]
    assert lost == []
    # the writes missing from the live data are exactly the acked ones the checkpoint
    # lacks, written by the writer before it was stopped (a new task writes afterwards)
    old_runs = {run_of(t) for t in checkpoint | safety}
    missing = {t for t in acks_after if t not in live}
    assert missing == {t for t in acks_after if t not in checkpoint and run_of(t) in old_runs}
    assert missing, "the writer wrote nothing between the checkpoint and the stop"
    # the writer was scaled to 0 and back to 1; it writes again, as a new task
    assert swarm.service("writer")["Spec"]["Mode"]["Replicated"]["Replicas"] == 1  # type: ignore[index]
    assert "io.backout.scaled-from" not in (swarm.service("writer")["Spec"].get("Labels") or {})  # type: ignore[union-attr]
    count = len(acked(swarm))
    until(lambda: len(acked(swarm)) > count, 60, "the writer writing again")
    assert result["ok"] is True


def test_an_unreachable_node_engine_is_named_exit_6(swarm: SwarmStack, tmp_path: Path) -> None:
    toml = swarm.project_dir / "backout.toml"
    text = toml.read_text()
    toml.write_text(text.replace(f'bolab2 = "{swarm.lab.host(2)}"',
                                 f'bolab2 = "unix://{tmp_path}/nothing.sock"'))
    try:
        assert_clean_error(run(swarm, "checkpoint"), 6, "node bolab2")
    finally:
        toml.write_text(text)
