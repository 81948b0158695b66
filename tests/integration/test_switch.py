"""Issue 14 on the real Docker Engine and Compose: ``rollback service`` switches
start-first behind nginx with no failed request, a request 5 s in flight completes,
the end state is what Compose would have made (a later ``docker compose up`` has
nothing to do), a release that never gets healthy is removed while the old one keeps
serving, SIGINT keeps the old one serving, and SIGKILL at a switch step then
``backout resume`` ends with one healthy container on the target image.

The stack is tests/stack/switch (nginx + one stateless app), see
tests/support/switchstack.py. Load: 4 threads through nginx, 20 ms apart."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from backout.state import Store
from bench.core import gap_figures
from tests.support.cli import backout, clean_env, ok
from tests.support.stack import wait_for
from tests.support.switchstack import IMAGE, Load, SwitchStack, build_switch_images

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def sw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchStack]:
    build_switch_images()
    stack = SwitchStack(tmp_path_factory.mktemp("switch"))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        tags = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                               "--filter", f"reference=backout-retained/{stack.project}*"],
                              capture_output=True, text=True, check=False).stdout.split()
        if tags:
            subprocess.run(["docker", "image", "rm", *tags], capture_output=True, check=False)


def image_id(tag: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}",
                           f"{IMAGE}:{tag}"], capture_output=True, text=True,
                          check=True).stdout.strip()


def one_app(sw: SwitchStack, tag: str) -> dict[str, Any]:
    """Exactly one container of app: running, healthy, on ``tag``'s image."""
    containers = sw.app_containers()
    assert len(containers) == 1, [(c["Name"], c["State"]["Status"]) for c in containers]
    c = containers[0]
    assert c["Image"] == image_id(tag), (c["Config"]["Image"], tag)
    assert c["State"]["Status"] == "running" and c["State"]["Health"]["Status"] == "healthy"
    return c


def rollback(sw: SwitchStack, tag: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return backout("--json", "rollback", "service", "app", tag, "--yes", *args, cwd=sw.dir, **env)


def start_at(sw: SwitchStack, tag: str, nginx_conf: str = "nginx-static.conf",
             proxy: str = "nginx-reload") -> None:
    if (sw.dir / ".git").exists():
        git(sw, "checkout", "-q", "-f", "main")  # a deploy test left another commit out
    sw.configure(nginx_conf, proxy, tag)
    sw.up()
    one_app(sw, tag)


def git(sw: SwitchStack, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          cwd=sw.dir, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def release_branch(sw: SwitchStack, tag: str, *, healthcheck: bool = True) -> str:
    """A commit (on branch rel-TAG) whose compose file names app's image TAG (without
    ``healthcheck``: app has none, not even its image's, and nginx waits for it
    started); the project becomes a
    git repository on branch main the first time."""
    if not (sw.dir / ".git").exists():
        (sw.dir / ".gitignore").write_text(".env\n")
        git(sw, "init", "-q", "-b", "main")
        git(sw, "add", "-A")
        git(sw, "commit", "-q", "-m", "the switch stack")
    git(sw, "checkout", "-q", "-B", f"rel-{tag}", "main")
    compose = sw.dir / "docker-compose.yml"
    text = compose.read_text()
    assert "switch-app:${APP_TAG:-v1}" in text
    text = text.replace("switch-app:${APP_TAG:-v1}", f"switch-app:{tag}")
    if not healthcheck:
        text, n = re.subn(r"\n    healthcheck:\n(      .*\n)+",
                          "\n    healthcheck:\n      disable: true  # the image has one\n", text,
                          count=1)  # app's: the first service (labelproxy has one too)
        assert n == 1
        text = text.replace("condition: service_healthy", "condition: service_started")
    compose.write_text(text)
    git(sw, "commit", "-q", "-am", f"app {tag}")
    git(sw, "checkout", "-q", "main")
    return f"rel-{tag}"


def test_deploy_of_a_healthy_release_switches_start_first(sw: SwitchStack) -> None:
    ref = release_branch(sw, "v2")
    start_at(sw, "v1")
    with Load(sw.url("/")) as load:
        time.sleep(0.5)
        slow = load.start_slow(sw.url("/slow?s=5"))
        time.sleep(0.3)
        result = backout("--json", "deploy", ref, "--watch", "0", cwd=sw.dir, timeout=600)
        slow.join(timeout=30)
        time.sleep(1)
    data = json.loads(ok(result).stdout)
    assert data["outcome"] == "deployed"
    steps = {s["name"]: s["status"] for s in data["steps"]}
    assert steps["drain the old app"] == "done"
    assert load.failed == [], load.failed[:5]
    assert load.slow is not None and load.slow.status == 200
    one_app(sw, "v2")
    dry = sw.compose("up", "-d", "--dry-run")
    assert not any(w in dry.stdout + dry.stderr for w in ("Recreate", "Creat", "Stop")), \
        dry.stdout + dry.stderr


def deploy_keeps_the_old_one(sw: SwitchStack, ref: str) -> str:
    """Deploy ``ref`` from v1 under load: the switch must fail with exit 8 and "the
    old release kept serving", no request failed and the old container never
    stopped. Its JSON output."""
    start_at(sw, "v1")
    old = one_app(sw, "v1")
    with Load(sw.url("/")) as load:
        time.sleep(0.5)
        result = backout("--json", "deploy", ref, "--watch", "0", cwd=sw.dir, timeout=600)
        time.sleep(0.5)
    assert result.returncode == 8, (result.stdout[-2000:], result.stderr[-2000:])
    assert "the old release kept serving" in result.stdout
    assert load.failed == [], load.failed[:5]
    assert one_app(sw, "v1")["Id"] == old["Id"]  # never stopped
    return result.stdout


def test_deploy_of_a_never_healthy_release_keeps_the_old_one_serving(sw: SwitchStack) -> None:
    deploy_keeps_the_old_one(sw, release_branch(sw, "never"))


def test_deploy_of_a_release_without_healthcheck_that_dies_keeps_the_old_one(
        sw: SwitchStack) -> None:
    """No healthcheck and a process that exits 0.45 s after the start: running at the
    switch's first look, it must not be taken as ready (traffic moved, the old one
    drained) before it has kept running a while."""
    out = deploy_keeps_the_old_one(sw, release_branch(sw, "dies", healthcheck=False))
    assert "is exited/None" in out  # seen running, then gone within 0.5 s


def test_start_first_behind_static_nginx_fails_no_request(sw: SwitchStack) -> None:
    start_at(sw, "v1")
    old = one_app(sw, "v1")
    with Load(sw.url("/")) as load:
        time.sleep(0.5)
        slow = load.start_slow(sw.url("/slow?s=5"))
        time.sleep(0.3)  # the slow request is in flight at the old container
        result = ok(rollback(sw, "v2"))
        slow.join(timeout=30)
        time.sleep(1)
    data = json.loads(result.stdout)
    assert data["plan"]["params"]["switch"]["order"] == "start-first"
    assert [s["status"] for s in data["steps"]][:4] == ["done"] * 4
    assert load.failed == [], load.failed[:5]
    assert len(load.samples) > 50
    assert load.slow is not None and load.slow.status == 200
    assert load.slow.end - load.slow.start >= 5
    new = one_app(sw, "v2")
    assert new["Id"] != old["Id"]
    # Compose's own container: its labels, network and the service alias.
    labels = new["Config"]["Labels"]
    assert labels["com.docker.compose.project"] == sw.project
    assert labels["com.docker.compose.service"] == "app"
    assert labels["com.docker.compose.oneoff"] == "False"
    assert new["Name"].lstrip("/").startswith(f"{sw.project}-app-")
    (network,) = new["NetworkSettings"]["Networks"]
    assert [network] == list(old["NetworkSettings"]["Networks"])
    assert "app" in new["NetworkSettings"]["Networks"][network]["Aliases"]
    # a later `docker compose up` (with the override backout used) has nothing to do
    override = f".backout/overrides/op-{data['operation_id']}.yml"
    dry = sw.compose("up", "-d", "--dry-run", files=(override,))
    assert not any(w in dry.stdout + dry.stderr for w in ("Recreate", "Creat", "Stop")), \
        dry.stdout + dry.stderr


def test_start_first_behind_nginx_with_a_resolver(sw: SwitchStack) -> None:
    start_at(sw, "v2", "nginx-resolver.conf", "nginx-resolver")
    with Load(sw.url("/")) as load:
        time.sleep(0.5)
        slow = load.start_slow(sw.url("/slow?s=5"))
        time.sleep(0.3)
        result = ok(rollback(sw, "v1"))
        slow.join(timeout=30)
        time.sleep(1)
    data = json.loads(result.stdout)
    proxies = next(s for s in data["plan"]["steps"] if s["key"] == "switch-proxies:app")
    assert "reload nginx so it asks Docker's DNS afresh at once" in proxies["reason"]
    assert load.failed == [], load.failed[:5]
    assert load.slow is not None and load.slow.status == 200
    one_app(sw, "v1")
    # The old address was fenced in nginx's namespace while it drained (root here):
    # a request nginx sent it in the instant between its stop and the reload was
    # refused at once and went to the new one, instead of waiting out nginx's
    # proxy_connect_timeout (2 s in this configuration; every client did, unfenced).
    drain = step_detail(sw, data["operation_id"], "switch-drain:app")
    assert drain.get("fenced") == ["nginx"], drain
    gap = gap_figures(load.samples, load.samples[0].start)  # as bench 5 counts it
    assert gap["longest_without_success_s"] < 1.5, gap
    assert fence_rules(sw) == [], "a fence was left up in nginx's network namespace"


def test_a_resolver_nginx_sends_nothing_to_the_new_one_before_it_is_ready(
        sw: SwitchStack) -> None:
    """Docker's DNS names the new container from its start, and this nginx asks it
    every 2 s: unheld, it would pass requests to a release that never gets ready (this
    one answers them, with its version). Held off by a fence in nginx's namespace from
    the moment it joins the network until it is removed, it answers none."""
    start_at(sw, "v1", "nginx-resolver.conf", "nginx-resolver")
    with Load(sw.url("/")) as load:
        time.sleep(0.5)
        result = rollback(sw, "never")
        time.sleep(0.5)
    assert result.returncode == 3, (result.stdout, result.stderr)
    last = Store(sw.dir / ".backout").last_operation()
    assert last is not None
    answered = {s.version for s in load.samples}
    assert answered == {"v1"}, sorted(answered)
    assert load.failed == [], load.failed[:5]
    start = step_detail(sw, last["id"], "switch-start:app")
    assert start.get("held_from") == ["nginx"], start
    assert fence_rules(sw) == [], "a fence was left up in nginx's network namespace"
    one_app(sw, "v1")


def test_behind_a_label_driven_proxy_pre_stop_drains_the_old_one_first(
        sw: SwitchStack) -> None:
    """A label-driven proxy (a stand-in following Traefik's Docker provider: it drops a
    container at its health or exit event, not when it is told to stop, and retries
    nothing) behind which the old container is made unhealthy by its pre_stop hook
    before it is stopped: no request fails."""
    start_at(sw, "v1")
    toml = (sw.dir / "backout.toml").read_text()
    assert "[services.app]\n" in toml
    (sw.dir / "backout.toml").write_text(
        toml.replace("[services.app]\n", "[services.app]\npre_stop = [\"touch\", "
                     "\"/tmp/drain\"]\npre_stop_wait_seconds = 30\n", 1)
        + '\n[services.labelproxy]\nkind = "proxy"\nproxy = "labels"\n')
    with (sw.dir / ".env").open("a") as env:  # the next start_at writes it afresh
        env.write("COMPOSE_PROFILES=labels\n")
    sw.compose("up", "-d", "labelproxy")
    url = f"http://127.0.0.1:{sw.labelproxy_port}/"
    try:
        wait_for(lambda: Load.get(url, timeout=2).status == 200, timeout=60, interval=0.2,
                 message="the label-driven proxy answering")
        with Load(url) as load:
            time.sleep(0.5)
            result = ok(rollback(sw, "v2"))
            time.sleep(1)
    finally:
        sw.compose("rm", "-sf", "labelproxy", check=False)
    assert load.failed == [], [(f.status, round(f.start - load.samples[0].start, 2))
                               for f in load.failed[:5]]
    data = json.loads(result.stdout)
    drain = step_detail(sw, data["operation_id"], "switch-drain:app")
    assert "pre_stop_s" in drain and "not_unhealthy" not in drain, drain
    assert {s.version for s in load.samples} == {"v1", "v2"}
    one_app(sw, "v2")


def step_detail(sw: SwitchStack, op_id: int, key: str) -> dict[str, Any]:
    detail = next(r["detail"] for r in Store(sw.dir / ".backout").operation_steps(op_id)
                  if r["key"] == key)
    assert isinstance(detail, dict)
    return detail


def fence_rules(sw: SwitchStack) -> list[str]:
    """Rules backout tagged in the nginx container's network namespace."""
    nginx = sw.compose("ps", "-q", "nginx").stdout.strip()
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", nginx],
                         capture_output=True, text=True, check=True).stdout.strip()
    rules = subprocess.run(["nsenter", f"--target={pid}", "--net", "--", "iptables", "-S",
                            "OUTPUT"], capture_output=True, text=True, check=True).stdout
    return [line for line in rules.splitlines() if "backout-op-" in line]


def test_a_release_that_never_gets_healthy_is_removed_and_the_old_one_serves(
        sw: SwitchStack) -> None:
    start_at(sw, "v1")
    old = one_app(sw, "v1")
    with Load(sw.url("/")) as load:
        time.sleep(0.5)
        result = rollback(sw, "never")
        time.sleep(0.5)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "the old release kept serving" in result.stderr
    assert load.failed == [], load.failed[:5]
    assert one_app(sw, "v1")["Id"] == old["Id"]  # never stopped, never recreated


def test_the_order_flag_and_a_fixed_port_fall_back_to_stop_first(sw: SwitchStack) -> None:
    start_at(sw, "v1")
    plan = json.loads(ok(backout("--json", "rollback", "service", "app", "v2", "--dry-run",
                                 "--order", "stop-first", cwd=sw.dir)).stdout)["plan"]
    assert plan["params"]["switch"] == {"order": "stop-first", "reasons": ["asked for"],
                                        "source": "--order"}
    assert plan["steps"][0]["action"] == "rollback.service.recreate"
    nginx = json.loads(ok(backout("--json", "rollback", "service", "nginx", "1.22",
                                  "--dry-run", cwd=sw.dir)).stdout)["plan"]
    assert nginx["params"]["switch"]["order"] == "stop-first"
    assert nginx["params"]["switch"]["reasons"][0].startswith(
        f"a fixed host port ({sw.port})")
    refused = backout("rollback", "service", "nginx", "1.22", "--dry-run", "--order",
                      "start-first", cwd=sw.dir)
    assert refused.returncode == 2 and "cannot switch start-first" in refused.stderr
    ok(rollback(sw, "v2", "--order", "stop-first"))
    one_app(sw, "v2")


@pytest.mark.soak  # the interrupt tests run in the soak (default-suite budget)
def test_sigint_while_the_new_one_is_not_ready_keeps_the_old_one(sw: SwitchStack) -> None:
    start_at(sw, "v1")
    old = one_app(sw, "v1")
    proc = subprocess.Popen([sys.executable, "-m", "backout", "rollback", "service", "app",
                             "never", "--yes"], cwd=sw.dir, env=clean_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(sw.app_containers()) == 2, timeout=60, interval=0.2,
                 message="the new container started")
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert one_app(sw, "v1")["Id"] == old["Id"]


def crash_then_resume(sw: SwitchStack, point: str, nginx_conf: str = "nginx-static.conf",
                      proxy: str = "nginx-reload") -> None:
    start_at(sw, "v1", nginx_conf, proxy)
    t0 = time.time()
    with Load(sw.url("/")) as load:
        killed = rollback(sw, "v2", BACKOUT_FAULT_INJECT=f"{point}=kill")
        assert killed.returncode in (-9, 137), (killed.stdout, killed.stderr)
        t1 = time.time()
        ok(backout("resume", cwd=sw.dir, timeout=300))
        time.sleep(0.5)
    one_app(sw, "v2")
    assert load.failed == [], (f"killed at {t1 - t0:.2f}s",
                               [(round(f.start - t0, 2), f.status) for f in load.failed],
                               sw.compose("logs", "--since", "2m", "nginx").stdout[-4000:])


# steps 0-3 switch (start, ready, proxies, drain), 4 is the abort (runs only after a failure), 5 verify, 6 record
ALL_POINTS = [f"step-{i}-{when}" for i in (0, 1, 2, 3, 5, 6) for when in ("started", "done")]


@pytest.mark.soak
@pytest.mark.parametrize("point", ALL_POINTS)
def test_sigkill_sweep_over_every_switch_step(sw: SwitchStack, point: str) -> None:
    crash_then_resume(sw, point)



@pytest.mark.parametrize("point", ["step-0-done", "step-1-started"])
def test_sigkill_while_the_new_one_is_held_off_a_resolver_nginx(sw: SwitchStack,
                                                                point: str) -> None:
    """Killed with the hold up (the new container started, not yet seen ready): the
    old one serves meanwhile, and the resume takes the hold down once it is ready."""
    crash_then_resume(sw, point, "nginx-resolver.conf", "nginx-resolver")
    assert fence_rules(sw) == [], "a fence was left up in nginx's network namespace"
