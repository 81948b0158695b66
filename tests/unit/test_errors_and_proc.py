from __future__ import annotations

import contextlib
import os
import sys

import pytest

from backout import proc
from backout.environment import MASK, Environment
from backout.errors import BackoutError, CommandFailedError, ExitCode, ExternalError


def test_exit_codes_are_stable() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 130]


def test_one_line_with_fix() -> None:
    err = BackoutError("thing\nbroke", fix="do  this")
    assert err.one_line() == "thing broke (fix: do this)"


def test_child_env_strips_credentials_and_passes_secret_env() -> None:
    env = Environment(env={"PATH": "/bin", "MYSQL_PASSWORD": "leak", "API_TOKEN": "t", "HOME": "/r"})
    child = proc.child_env(env, {"MYSQL_PWD": "given-secret"})
    assert child == {"PATH": "/bin", "HOME": "/r", "MYSQL_PWD": "given-secret"}
    assert env.redact("x given-secret y") == f"x {MASK} y"


def test_run_masks_secrets_in_verbose_log_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    env = Environment(verbose=True, env=dict(os.environ))
    env.redact.add("sentinel-pw-42")
    with caplog.at_level("INFO", logger="backout"), pytest.raises(CommandFailedError) as info:
        proc.run(env, [sys.executable, "-c",
                       "import os,sys; sys.stderr.write('bad ' + os.environ['PW']); sys.exit(3)"],
                 secret_env={"PW": "sentinel-pw-42"})
    assert "sentinel-pw-42" not in info.value.one_line()
    assert "bad ******" in info.value.one_line()
    assert "exit 3" in caplog.text
    assert "sentinel-pw-42" not in caplog.text


def test_run_missing_binary_and_timeout() -> None:
    env = Environment()
    with pytest.raises(ExternalError, match="not installed"):
        proc.run(env, ["definitely-not-a-binary-xyz"])
    with pytest.raises(ExternalError, match="timed out"):
        proc.run(env, ["sleep", "5"], timeout=0.2)


def test_secret_never_in_child_argv() -> None:
    # The child sees the secret in its environment only; its cmdline has none.
    env = Environment()
    result = proc.run(env, ["sh", "-c", 'cat /proc/$$/cmdline; printf "|%s" "$PW"'],
                      secret_env={"PW": "sentinel-pw-43"})
    cmdline, _, from_env = result.stdout.rpartition("|")
    assert "sentinel-pw-43" not in cmdline
    assert from_env == "sentinel-pw-43"


def test_secrets_added_from_many_threads_are_all_masked() -> None:
    """verify's checks run at once and each may learn a password (read from its
    container): none may be lost, and masking while they are added never fails."""
    import threading

    from backout.environment import Redactor

    redact = Redactor()
    values = [[f"secret-{t}-{i:04d}" for i in range(300)] for t in range(6)]
    text = " ".join(v for group in values for v in group)

    def add(group: list[str]) -> None:
        for value in group:
            redact.add(value)
            redact(text[:200])  # masking while others add

    threads = [threading.Thread(target=add, args=(g,)) for g in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(v in redact for group in values for v in group)
    assert set(redact(text).split()) == {"******"}


def test_settled_waits_for_its_background_calls_however_the_body_ends() -> None:
    """A read started beside another must not run on past the step (a row count
    holding a table's lock into the DROP that follows): it has ended when the body
    is left, by a return or an error; not on Ctrl-C, which leaves at once."""
    import threading

    from backout import proc

    def slow(gate: threading.Event) -> None:
        gate.wait(5)

    for ending in (None, ValueError("boom")):
        gate = threading.Event()
        threading.Timer(0.2, gate.set).start()
        with contextlib.suppress(ValueError), proc.settled() as started:
            call = proc.Background(lambda g=gate: slow(g))  # type: ignore[misc]
            started.append(call)
            if ending is not None:
                raise ending
        assert gate.is_set() and not call._thread.is_alive()
    gate = threading.Event()
    with contextlib.suppress(KeyboardInterrupt), proc.settled() as started:
        started.append(proc.Background(lambda: slow(gate)))
        raise KeyboardInterrupt
    assert not gate.is_set()  # left without waiting
    gate.set()
