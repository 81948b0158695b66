"""The setup scripts on a machine made of fakes: ``docker``, ``dockerd`` and
``apt-get`` are shell scripts in a directory put first on PATH, and the "Prometheus"
processes are ``sleep`` started under the name ``prometheus``.

The scripts run inside a PID namespace of their own (``unshare --pid``): a
regression that kills processes by name can then only reach the test's own
processes, never a Prometheus that another test on this machine runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "scripts" / "ensure-docker.sh"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare (a PID namespace keeps the machine's processes out of reach)")

FAKE_DOCKER = """#!/bin/sh
case "$1 $2" in
  "info "*|"image inspect") exit 0 ;;
  "compose version") [ "$3" = --short ] && echo 2.40.3-fake; exit 0 ;;
  "version "*) echo "engine fake"; exit 0 ;;
esac
echo "fake docker: $*" >&2; exit 1
"""

# Installs "prometheus" the way Debian's package does: the binary, then the
# maintainer script starts the service unless policy-rc.d says 101 (or, with
# FAKE_IGNORE_POLICY, starts it anyway, as an init system that ignores the hook).
FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
case " $* " in *" install "*prometheus*) ;; *) exit 0 ;; esac
ln -sf "$(command -v sleep)" "$FAKE_BIN/prometheus"
if [ -x "$BACKOUT_POLICY_RC_D" ]; then
  echo "policy present" >> "$FAKE_LOG"
  "$BACKOUT_POLICY_RC_D" prometheus start; rc=$?
else
  rc=0
fi
if [ "$rc" != 101 ] || [ -n "$FAKE_IGNORE_POLICY" ]; then
  "$FAKE_BIN/prometheus" 300 </dev/null >/dev/null 2>&1 &
  echo "started $!" >> "$FAKE_LOG"
fi
"""


# The real tools the scripts use; nothing else of this machine (its docker, dockerd,
# prometheus, uv) is on the fake machine's PATH.
BASICS = ("bash", "sh", "env", "cat", "sed", "tr", "head", "find", "mkdir", "mktemp", "rm",
          "ln", "tee", "chmod", "install", "id", "seq", "sleep", "timeout", "pgrep", "kill",
          "pkill", "zstd", "git", "python3", "unshare", "dirname", "basename", "grep", "stty")


def _machine(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    fake, basics = tmp_path / "bin", tmp_path / "basics"
    fake.mkdir()
    basics.mkdir()
    for tool in BASICS:
        found = shutil.which(tool)
        if found:
            (basics / tool).symlink_to(found)
    for name, text in (("docker", FAKE_DOCKER), ("dockerd", "#!/bin/sh\nexit 0\n"),
                       ("apt-get", FAKE_APT)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    env = {"PATH": f"{fake}:{basics}",
           "HOME": str(tmp_path), "FAKE_BIN": str(fake), "FAKE_LOG": str(tmp_path / "log"),
           "BACKOUT_POLICY_RC_D": str(tmp_path / "policy-rc.d")}
    return fake, env


def _in_own_pid_namespace(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (bash) as PID 1's child in a fresh PID namespace; it prints what
    it wants the test to see."""
    return subprocess.run([str(shutil.which("unshare")), "--pid", "--fork", "--mount-proc",
                           str(shutil.which("bash")), "-c", script],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


USERS_OWN = """
mkdir -p "$HOME/own" && ln -sf "$(command -v sleep)" "$HOME/own/prometheus"
"$HOME/own/prometheus" 300 </dev/null >/dev/null 2>&1 &
own=$!
sleep 0.2
bash {script} {args} >"$HOME/out" 2>&1; echo "rc=$?"
sleep 0.3
kill -0 $own 2>/dev/null && echo "own alive" || echo "own killed"
echo "running: $(pgrep -x prometheus | tr '\\n' ' ')"
echo "own=$own"
"""


def test_ensure_docker_stops_only_the_prometheus_it_started(tmp_path: Path) -> None:
    _fake, env = _machine(tmp_path)
    env["FAKE_IGNORE_POLICY"] = "1"  # the package starts its server whatever the hook says
    result = _in_own_pid_namespace(USERS_OWN.format(script=ENSURE, args=""), env)
    lines = result.stdout.splitlines()
    assert "rc=0" in lines, (result.stdout, (tmp_path / "out").read_text())
    assert "own alive" in lines, (result.stdout, (tmp_path / "out").read_text())
    own = next(line[4:] for line in lines if line.startswith("own="))
    running = next(line for line in lines if line.startswith("running:")).split()[1:]
    assert running == [own]  # the package's server is gone, the machine's own one runs
    log = (tmp_path / "log").read_text()
    started = next(line.split()[1] for line in log.splitlines() if line.startswith("started"))
    assert f"pid {started}" in (tmp_path / "out").read_text()  # it says which PID it stopped


def test_ensure_docker_keeps_the_package_from_starting_its_service(tmp_path: Path) -> None:
    _fake, env = _machine(tmp_path)
    result = _in_own_pid_namespace(USERS_OWN.format(script=ENSURE, args=""), env)
    lines = result.stdout.splitlines()
    assert "rc=0" in lines and "own alive" in lines, result.stdout
    log = (tmp_path / "log").read_text()
    assert "policy present" in log and "started" not in log
    assert not (tmp_path / "policy-rc.d").exists()  # its own hook is removed afterwards


def test_ensure_docker_leaves_a_machines_own_policy_alone(tmp_path: Path) -> None:
    _fake, env = _machine(tmp_path)
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# the machine's own\nexit 101\n")
    policy.chmod(0o755)
    result = _in_own_pid_namespace(USERS_OWN.format(script=ENSURE, args=""), env)
    assert "rc=0" in result.stdout.splitlines(), result.stdout
    assert policy.read_text() == "#!/bin/sh\n# the machine's own\nexit 101\n"


def test_the_plan_lists_what_is_missing_and_changes_nothing(tmp_path: Path) -> None:
    fake, env = _machine(tmp_path)
    (fake / "dockerd").unlink()
    plan = _in_own_pid_namespace(f"bash {ENSURE} --plan", env).stdout
    assert "docker.io" in plan and "prometheus" in plan
    assert not (tmp_path / "log").exists()  # apt-get never ran
    without = _in_own_pid_namespace(f"bash {ENSURE} --plan --no-test-tools", env).stdout
    assert "docker.io" in without and "prometheus" not in without
