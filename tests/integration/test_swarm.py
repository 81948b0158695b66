"""backout on a real two-node Docker Swarm (tests/swarm/lab.sh): the stack of
tests/swarm/stack.yml with its database pinned to node 2, the app on both nodes
(start-first), a live writer on node 1.

The tests of this module run in order against one deployed stack (each leaves it
converged for the next); the lab is started once per session. The default run keeps
what fits its budget (releases, verify, a service rollback after Swarm's own, a
database rollback with a live writer, a node that does not answer, init); the paused
update, the emergency rollback, the monitor, the proxy's zero failed requests with the
timing against a bare `docker service update`, and the kill -9 sweep are soak tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_clean_error, backout, clean_env, ok, ok_json
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
        yield stack
    finally:
        stack.remove()


@pytest.fixture(scope="module")
def writer(swarm: SwarmStack) -> Iterator[AckLog]:
    log = AckLog(swarm)
    try:
        until(lambda: len(log.acked()) > 5, 120, "the writer's first acknowledged writes")
        yield log
    finally:
        log.close()


def run(stack: SwarmStack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return backout(*args, cwd=stack.project_dir, timeout=timeout)


class AckLog:
    """Every write the writer saw acknowledged: `docker logs -f` of each writer container
    (on node 1) from the moment it appears. Scaling a service to 0 removes its tasks'
    containers, logs included, so they are followed while they live."""

    def __init__(self, stack: SwarmStack) -> None:
        self.stack = stack
        self.followers: dict[str, subprocess.Popen[str]] = {}
        self.lines: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            ids = self.stack.lab.docker(
                "ps", "-aq", "--no-trunc", "--filter",
                f"label=com.docker.swarm.service.name={self.stack.name}_writer",
                check=False).stdout.split()
            for cid in ids:
                if cid not in self.followers:
                    proc = subprocess.Popen(["docker", "-H", self.stack.lab.host(1), "logs", "-f",
                                             cid], stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True)
                    self.followers[cid] = proc
                    self.lines[cid] = []
                    threading.Thread(target=self._read, args=(cid, proc), daemon=True).start()
            self._stop.wait(0.3)

    def _read(self, cid: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines[cid].append(line)

    def acked(self) -> list[str]:
        return [m.group(0) for lines in list(self.lines.values()) for line in list(lines)
                if line.startswith("ACK ") for m in [ACK.search(line)] if m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for proc in self.followers.values():
            proc.terminate()
            proc.wait(timeout=10)


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
    assert set(services) == {"db", "redis", "frontend", "writer", "proxy"}
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


@pytest.mark.soak
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


def test_checkpoint_damage_rollback_db_on_node_2_with_a_live_writer(
        swarm: SwarmStack, writer: AckLog) -> None:
    cp = ok_json(run(swarm, "checkpoint", "--json"))
    set_id = cp["set_id"]
    time.sleep(2)
    swarm.db_exec("DELETE FROM acks WHERE token LIKE 'ack-%-1'; CREATE TABLE junk (x INT);")
    result = ok_json(run(swarm, "rollback", "db", "main", set_id, "--yes", "--json"))
    acks_after = writer.acked()
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
    count = len(writer.acked())
    until(lambda: len(writer.acked()) > count, 60, "the writer writing again")
    assert result["ok"] is True


@pytest.mark.soak
def test_rollback_emergency_deploys_the_previous_commit_pinned(swarm: SwarmStack) -> None:
    good = ok_json(run(swarm, "release", "record", "--json"))["release"]
    compose = swarm.project_dir / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("frontend:${FRONTEND_TAG:-healthy}",
                                                   "frontend:unhealthy"))
    swarm.git("commit", "-qam", "a bad release")
    swarm.deploy()
    # The bad tasks start, fail their healthcheck and are replaced, again and again
    # (an unhealthy task killed by Swarm ends "complete": Swarm may never pause).
    until(lambda: any("frontend:unhealthy" in line for line in swarm.lab.docker(
        "service", "ps", "--format", "{{.Image}} {{.CurrentState}}",
        f"{swarm.name}_frontend").stdout.splitlines()), 120, "the bad deploy to start")
    ok(run(swarm, "rollback", "emergency", f"r{good['id']}", "--yes"))
    assert swarm.git("rev-parse", "HEAD").strip() == good["commit"]
    assert frontend_digests(swarm) == {swarm.digest_of("healthy")}
    # every service of the stack runs pinned by digest
    for name in ("db", "redis", "frontend", "writer"):
        spec = swarm.service(name)["Spec"]
        assert "@sha256:" in spec["TaskTemplate"]["ContainerSpec"]["Image"]  # type: ignore[index]
    ok(run(swarm, "verify"))
    swarm.git("checkout", "-q", "main")


def test_an_unreachable_node_engine_is_named_exit_6(swarm: SwarmStack, tmp_path: Path) -> None:
    toml = swarm.project_dir / "backout.toml"
    text = toml.read_text()
    toml.write_text(text.replace(f'bolab2 = "{swarm.lab.host(2)}"',
                                 f'bolab2 = "unix://{tmp_path}/nothing.sock"'))
    try:
        assert_clean_error(run(swarm, "checkpoint"), 6, "node bolab2")
        assert_clean_error(run(swarm, "verify"), 6, "node bolab2")
    finally:
        toml.write_text(text)


def test_init_recognises_a_stack_deployed_on_the_swarm(swarm: SwarmStack, tmp_path: Path) -> None:
    project = tmp_path / "fresh"
    project.mkdir()
    for name in ("docker-compose.yml", ".env", "proxy.conf"):
        (project / name).write_text((swarm.project_dir / name).read_text())
    ok(backout("init", cwd=project, DOCKER_HOST=swarm.lab.manager))
    text = (project / "backout.toml").read_text()
    assert 'kind = "swarm"' in text and f'name = "{swarm.name}"' in text
    assert f'manager = "{swarm.lab.manager}"' in text
    ok(backout("config", "check", cwd=project))


def build_second_healthy_frontend(swarm: SwarmStack) -> str:
    """frontend:swarm-v2 (a label on top of :healthy), built on node 1 and pushed to the
    lab registry: a second healthy release to roll back from."""
    ref = f"{swarm.lab.registry}/backout-test/frontend:swarm-v2"
    dockerfile = (f"FROM {swarm.lab.registry}/backout-test/frontend:healthy\n"
                  "LABEL io.backout.test.variant=swarm-v2\n")
    subprocess.run(["docker", "-H", swarm.lab.manager, "build", "-q", "-t", ref, "-"],
                   input=dockerfile, text=True, capture_output=True, check=True, timeout=300)
    swarm.lab.docker("push", "-q", ref, timeout=300)
    return ref


@pytest.mark.soak
def test_zero_failed_requests_through_the_proxy_and_bench_against_bare_update(
        swarm: SwarmStack) -> None:
    """The app updated start-first behind the proxy (host mode on node 1, reaching the
    app by name): no request fails during `backout rollback service`. The same run
    times it against a bare `docker service update --image` of the same digest."""
    from tests.support.load import Load
    from tests.support.swarm import PROXY_PORT

    url = f"http://{swarm.lab.env['BOLAB_NODE1_ADDR']}:{PROXY_PORT}/"
    until(lambda: subprocess.run(["curl", "-fsS", "-m", "3", "-o", "/dev/null", url],
                                 check=False).returncode == 0, 120, "the proxy answering")
    v2 = build_second_healthy_frontend(swarm)
    svc = f"{swarm.name}_frontend"
    healthy_ref = f"{swarm.lab.registry}/backout-test/frontend@{swarm.digest_of('healthy')}"
    swarm.lab.docker("service", "update", "-q", "--image", healthy_ref, svc, timeout=300)
    good = ok_json(run(swarm, "release", "record", "--json"))["release"]["id"]
    timings: dict[str, list[float]] = {"backout": [], "bare": []}
    failed: dict[str, int] = {"backout": 0, "bare": 0}
    sent: dict[str, int] = {"backout": 0, "bare": 0}
    for _ in range(2):
        for kind in ("backout", "bare"):
            swarm.lab.docker("service", "update", "-q", "--image", v2, svc, timeout=300)
            swarm.wait_converged("frontend", "swarm-v2", 2)
            with Load(url, period=0.02) as load:
                time.sleep(1)
                start = time.monotonic()
                if kind == "backout":
                    ok(run(swarm, "rollback", "service", "frontend", f"r{good}", "--yes"))
                else:
                    swarm.lab.docker("service", "update", "-q", "--image", healthy_ref, svc,
                                     timeout=300)
                timings[kind].append(time.monotonic() - start)
                time.sleep(1)
            failed[kind] += load.failed
            sent[kind] += load.sent
            assert frontend_digests(swarm) == {swarm.digest_of("healthy")}
    ratio = sum(timings["backout"]) / sum(timings["bare"])
    print(f"swarm service rollback: backout {timings['backout']} s, bare docker service update "
          f"{timings['bare']} s, ratio {ratio:.2f}; requests sent {sent}, failed {failed}")
    assert sent["backout"] > 100
    assert failed["backout"] == 0


def monitor(project: Path, *args: str, until_red: bool, timeout: float) -> list[dict[str, Any]]:
    """`backout monitor --json ARGS` as an operator runs it, until the first RED."""
    proc = subprocess.Popen([sys.executable, "-m", "backout", "monitor", "--json", *args],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env())
    decisions: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            decisions.append(json.loads(line))
            if (until_red and decisions[-1]["level"] == "RED") or time.monotonic() > deadline:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return decisions


@pytest.mark.soak
def test_monitor_auto_rollback_reaches_red_and_rolls_back_once(swarm: SwarmStack) -> None:
    """A release whose app fails (its pages answer 5xx through the proxy) goes RED on the
    failing health probe; the monitor rolls the stack back to the recorded release once,
    and verify passes."""
    from tests.support.swarm import PROXY_PORT

    toml = swarm.project_dir / "backout.toml"
    text = toml.read_text()
    proxy = f"http://{swarm.lab.env['BOLAB_NODE1_ADDR']}:{PROXY_PORT}/"
    until(lambda: subprocess.run(["curl", "-fsS", "-m", "3", "-o", "/dev/null", proxy],
                                 check=False).returncode == 0, 120, "the proxy answering")
    ok(run(swarm, "release", "record"))
    before = max([o["id"] for o in ok_json(run(swarm, "history", "--json"))["operations"]],
                 default=0)
    toml.write_text(text.replace('[services.frontend]\nkind = "app"\n',
                                 f'[services.frontend]\nkind = "app"\nhealth_url = "{proxy}"\n'))
    try:
        swarm.lab.docker("service", "update", "-q", "--image",
                         f"{swarm.lab.registry}/backout-test/frontend:errors",
                         f"{swarm.name}_frontend", timeout=300)
        decisions = monitor(swarm.project_dir, "--auto-rollback", "--interval", "2",
                            until_red=True, timeout=300)
        assert decisions[-1]["level"] == "RED", decisions[-3:]
        fired = [tr for d in decisions for tr in d["transitions"]
                 if tr["rule"] == "red-health-check" and tr["kind"] == "fired"]
        assert fired and "frontend" in fired[0]["signal"]
        ops = json.loads(run(swarm, "history", "--json").stdout)["operations"]
        rollbacks = [o for o in ops if o["kind"].startswith("rollback") and o["id"] > before]
        assert len(rollbacks) == 1 and rollbacks[0]["status"] == "succeeded", rollbacks
        assert frontend_digests(swarm) == {swarm.digest_of("healthy")}
        ok(run(swarm, "verify"))
    finally:
        toml.write_text(text)


@pytest.mark.soak
def test_deploy_a_good_commit_then_a_bad_one_that_is_rolled_back(swarm: SwarmStack) -> None:
    """`backout deploy` on the Swarm: a good commit converges and stays (exit 0); a
    commit whose app answers 5xx through the proxy goes RED during the watch and is
    rolled back to the previous commit's pinned images by itself (exit 8), verified."""
    from tests.support.swarm import PROXY_PORT

    proxy = f"http://{swarm.lab.env['BOLAB_NODE1_ADDR']}:{PROXY_PORT}/"
    compose = swarm.project_dir / "docker-compose.yml"
    toml = swarm.project_dir / "backout.toml"
    swarm.git("checkout", "-q", "main")

    def commit(tag: str, message: str) -> str:
        compose.write_text(re.sub(r"backout-test/frontend:\S+", f"backout-test/frontend:{tag}",
                                  compose.read_text()))
        swarm.git("commit", "-qam", message)
        return swarm.git("rev-parse", "HEAD").strip()

    text = toml.read_text()
    assert '[services.frontend]\nkind = "app"\n' in text
    toml.write_text(text.replace(
        '[services.frontend]\nkind = "app"\n',
        f'[services.frontend]\nkind = "app"\nhealth_url = "{proxy}"\n'))
    good = commit("healthy", "a good release, watched through the proxy")
    done = run(swarm, "deploy", good, "--watch", "20", "--json")
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert frontend_digests(swarm) == {swarm.digest_of("healthy")}
    bad = commit("errors", "a release whose pages fail")
    swarm.git("checkout", "-q", good)  # the operator deploys from where the stack is
    result = run(swarm, "deploy", bad, "--watch", "180", "--json")
    assert result.returncode == 8, (result.stdout[-3000:], result.stderr[-3000:])
    report = json.loads(result.stdout)
    assert report["outcome"] == "rolled_back" and report["incident"], report
    assert swarm.git("rev-parse", "HEAD").strip() == good
    assert frontend_digests(swarm) == {swarm.digest_of("healthy")}
    ok(run(swarm, "verify"))
    swarm.git("checkout", "-q", "main")


@pytest.mark.soak
def test_kill_9_at_every_step_of_rollback_db_then_resume(swarm: SwarmStack,
                                                         writer: AckLog) -> None:
    """SIGKILL at each journaled step of `rollback db` on the Swarm (database on node 2,
    writer scaled to 0 on node 1), then `backout resume`: the database ends as the
    checkpoint (plus what the writer wrote after), the writer is back at its replica
    count and writing, every acknowledged write is live or in a safety backup."""
    import signal

    from tests.support.integrity import run_signalled

    cp = ok_json(run(swarm, "checkpoint", "--json"))["set_id"]
    checkpoint = tokens_in(swarm.project_dir / ".backout" / "backups" / cp / "main.sql.zst")
    steps = ok_json(run(swarm, "rollback", "db", "main", cp, "--dry-run", "--json"))
    count = len(steps["plan"]["steps"])
    assert count >= 5
    for step in range(count):
        killed = run_signalled(swarm.project_dir, ["rollback", "db", "main", cp, "--yes"],
                               step=step, sig=signal.SIGKILL, delay=1.0)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-2000:])
        resumed = run(swarm, "resume")
        assert resumed.returncode == 0, (step, resumed.stdout[-2000:], resumed.stderr[-2000:])
        spec = swarm.service("writer")["Spec"]
        assert spec["Mode"]["Replicated"]["Replicas"] == 1, step  # type: ignore[index]
        assert "io.backout.scaled-from" not in (spec.get("Labels") or {}), step  # type: ignore[union-attr]
        acked_before = writer.acked()  # before the live read: later acks are not in it yet
        live = set(swarm.db_exec("SELECT token FROM acks").split())
        assert checkpoint <= live, step
        safety = set().union(*(tokens_in(p / "main.sql.zst") for p in
                                (swarm.project_dir / ".backout" / "backups").iterdir()
                                if (p / "main.sql.zst").is_file()))
        lost = [t for t in acked_before if t not in live and t not in safety]
        assert lost == [], (step, lost[:5])
        acks = len(writer.acked())
        until(lambda n=acks: len(writer.acked()) > n, 90, f"the writer writing after step {step}")


@pytest.mark.soak
def test_node_2_engine_stopped_during_rollback_db_exit_6_then_resume(
        swarm: SwarmStack, writer: AckLog) -> None:
    """Node 2's dockerd (the database's node) stops while `rollback db` restores: one
    error naming the node (exit 6); the writers are started again; once the node is
    back, `backout resume` finishes (the safety backup back in place) and no
    acknowledged write is lost."""
    import signal

    from tests.support.integrity import journal_step_started, last_operation_id
    from tests.support.stack import wait_for
    from tests.support.swarm import LAB_SCRIPT

    cp = ok_json(run(swarm, "checkpoint", "--json"))["set_id"]
    plan = ok_json(run(swarm, "rollback", "db", "main", cp, "--dry-run", "--json"))["plan"]
    restore = next(i for i, s in enumerate(plan["steps"]) if s["action"] == "rollback.db.restore")
    since = last_operation_id(swarm.project_dir)
    proc = subprocess.Popen([sys.executable, "-m", "backout", "rollback", "db", "main", cp,
                             "--yes"], cwd=swarm.project_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env(
                                BACKOUT_FAULT_INJECT=f"step-{restore}-started=sleep:10"))
    wait_for(lambda: journal_step_started(swarm.project_dir, restore, since), timeout=300,
             interval=0.2, message="the restore step")
    pid = int(Path("/run/bolab/bolab2.pid").read_text())  # the lab's own dockerd of node 2
    os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 6, (out[-2000:], err[-2000:])
    assert "node bolab2" in err and "Traceback" not in err
    assert "resume" in err
    # the cleanup that needs node 2 (the safety backup back) and every step after it
    # wait for `backout resume`: the writer stays stopped while the data is unsure
    spec = swarm.service("writer")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 0  # type: ignore[index]
    # the node back (the lab script starts what is not running), its database task again
    subprocess.run(["bash", str(LAB_SCRIPT), "up"], check=True, capture_output=True,
                   timeout=600)
    swarm.wait_converged("db", "mariadb", 1, timeout=300)
    # resume finishes the cleanup (the safety backup back, the writer started) and then
    # says how the operation ended: its restore failed (exit 6), the data as before it
    resumed = run(swarm, "resume")
    assert resumed.returncode == 6, (resumed.stdout[-2000:], resumed.stderr[-2000:])
    assert "as before the restore" in resumed.stderr and "running again" in resumed.stderr
    spec = swarm.service("writer")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 1  # type: ignore[index]
    acked_before = writer.acked()
    live = set(swarm.db_exec("SELECT token FROM acks").split())
    safety = set().union(*(tokens_in(p / "main.sql.zst") for p in
                           (swarm.project_dir / ".backout" / "backups").iterdir()
                           if (p / "main.sql.zst").is_file()))
    lost = [t for t in acked_before if t not in live and t not in safety]
    assert lost == []
    # nothing is left in the way: the same rollback now runs through
    ok(run(swarm, "rollback", "db", "main", cp, "--yes"))
    checkpoint = tokens_in(swarm.project_dir / ".backout" / "backups" / cp / "main.sql.zst")
    assert checkpoint <= set(swarm.db_exec("SELECT token FROM acks").split())
    acks = len(writer.acked())
    until(lambda: len(writer.acked()) > acks, 120, "the writer writing again")


@pytest.mark.soak
def test_a_stalled_start_first_update_is_detected_explained_and_undone(
        swarm: SwarmStack) -> None:
    """A global service publishing a host-mode port on every node, updated start-first:
    the new task has no node where the port is free and stays Pending. backout's
    rollback sees it stall (stall_seconds = 15 here), puts the service back on the image
    it had, and says why (exit 3)."""
    v2 = build_second_healthy_frontend(swarm)
    name = f"{swarm.name}_edge"
    # in the stack's definition too (rollback service names a service of it); created
    # by hand so that the rest of the stack is left as it is
    compose = swarm.project_dir / "docker-compose.yml"
    definition = compose.read_text()
    compose.write_text(definition.replace("\nvolumes:\n", f"""
  edge:
    image: {swarm.lab.registry}/backout-test/frontend:healthy
    ports:
      - {{target: 3000, published: 18090, mode: host}}
    deploy:
      mode: global
      update_config:
        order: start-first
volumes:
""", 1))
    swarm.lab.docker(
        "service", "create", "-d", "--name", name, "--mode", "global",
        "--label", f"com.docker.stack.namespace={swarm.name}",
        "--container-label", f"com.docker.stack.namespace={swarm.name}",
        "--network", f"{swarm.name}_default", "--publish", "mode=host,target=3000,published=18090",
        "--env", "REDIS_HOST=redis", "--env", f"REDIS_PASSWORD={swarm.env_values['REDIS_PASSWORD']}",
        "--health-interval", "2s", "--health-start-period", "4s", "--update-order", "stop-first",
        f"{swarm.lab.registry}/backout-test/frontend:healthy")
    try:
        swarm.wait_converged("edge", "frontend:healthy", 2)
        release = ok_json(run(swarm, "release", "record", "--json"))["release"]["id"]
        swarm.lab.docker("service", "update", "-q", "--image", v2, name, timeout=300)
        swarm.wait_converged("edge", "swarm-v2", 2)
        swarm.lab.docker("service", "update", "-q", "--update-order", "start-first", name)
        result = run(swarm, "rollback", "service", "edge", f"r{release}", "--yes")
        line = assert_clean_error(result, 3, "stalled", "pending", "undone")
        assert "host mode" in line and "18090" in line
        swarm.wait_converged("edge", "swarm-v2", 2, timeout=60)  # back where it was
    finally:
        swarm.lab.docker("service", "rm", name, check=False)
        compose.write_text(definition)


@pytest.mark.soak
def test_the_database_password_from_a_swarm_secret_in_the_task(swarm: SwarmStack) -> None:
    """The root password as a Swarm secret mounted in the database task on node 2, named
    by a *_FILE variable of the task (as the official images read one); backout.toml
    names that variable (password_container_env) and holds no password source of its
    own. checkpoint reads the file inside the task: the password is in no argv (the
    verbose log shows every one), no output, no manifest, no state. Last in the module:
    it restarts the database task."""
    secret = f"{swarm.name}_dbroot"
    password = swarm.env_values["MYSQL_ROOT_PASSWORD"]
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    subprocess.run(["docker", "-H", swarm.lab.host(1), "secret", "create", secret, "-"],
                   input=password, text=True, check=True, capture_output=True, env=env,
                   timeout=60)
    # MYSQL_ROOT_PASSWORD_FILE itself would clash with the image's MYSQL_ROOT_PASSWORD,
    # which the lab's db_exec reads: another *_FILE name, the same mechanism
    swarm.lab.docker("service", "update", "-q", "--secret-add",
                     f"source={secret},target=db_root", "--env-add",
                     "DB_ROOT_PASSWORD_FILE=/run/secrets/db_root", f"{swarm.name}_db",
                     timeout=300)
    swarm.wait_converged("db", "mariadb", 1, timeout=300)
    toml = swarm.project_dir / "backout.toml"
    text = toml.read_text()
    assert 'password_env = "MYSQL_ROOT_PASSWORD"' in text
    toml.write_text(text.replace('password_env = "MYSQL_ROOT_PASSWORD"',
                                 'password_container_env = "DB_ROOT_PASSWORD_FILE"'))
    try:
        result = run(swarm, "checkpoint", "--json", "--verbose")
        assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
        data = json.loads(result.stdout)
        assert data["set_id"] and "docker" in result.stderr  # the verbose log is there
        assert password not in result.stdout + result.stderr
        # a value read is masked wherever it would be printed: a mask in the log of
        # argv would be the password on a command line
        assert "******" not in result.stderr
        state = swarm.project_dir / ".backout"
        leaks = [p for p in state.rglob("*") if p.is_file() and not p.name.endswith(".zst")
                 and password.encode() in p.read_bytes()]
        assert leaks == []
        ok(run(swarm, "verify"))
    finally:
        toml.write_text(text)
