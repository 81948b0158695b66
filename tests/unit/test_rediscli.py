"""The redis-cli session (engines/rediscli.py) against a stand-in redis-cli: a Python
script that reads commands a line at a time, as redis-cli does without a terminal."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backout import proc
from backout.engines.rediscli import CliSession, plain
from backout.environment import Environment
from backout.errors import BackoutError, ExternalError

FAKE = textwrap.dedent('''
    import os, sys, time
    if os.environ.get("FAKE_NO_SERVER"):
        for line in sys.stdin:
            print("Could not connect to Redis at 127.0.0.1:6379: Connection refused",
                  file=sys.stderr, flush=True)
        sys.exit(0)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "ECHO":
            print(words[1])
        elif words[0] == "PING":
            print("PONG")
        elif words[0] == "INFO":
            print("# Persistence\\r\\nrdb_bgsave_in_progress:0\\r\\nrdb_last_save_time:7\\r")
        elif words[0] == "SECRET":
            print(os.environ.get("REDISCLI_AUTH", "none"))
        elif words[0] == "FAIL":
            print("ERR unknown command 'FAIL'")
        elif words[0] == "HANG":
            time.sleep(30)
        elif words[0] == "DIE":
            sys.exit(3)
        elif words[0] == "DIE_SLOWLY":  # its pipes end before its exit code exists
            os.close(1); os.close(2); time.sleep(0.5); os._exit(4)
        elif words[0] == "EMPTY":
            print("")
        sys.stdout.flush()
''')


class Explained(BackoutError):
    exit_code = 9


def _session(tmp_path: Path, **env: str) -> tuple[CliSession, list[tuple[proc.Result, str]]]:
    script = tmp_path / "fake_redis_cli.py"
    script.write_text(FAKE)
    seen: list[tuple[proc.Result, str]] = []

    def explain(result: proc.Result, what: str) -> BackoutError:
        seen.append((result, what))
        return Explained(f"explained: {what}")

    environment = Environment(env={**os.environ, **env})
    return CliSession(environment, [sys.executable, str(script)],
                      secret_env={"REDISCLI_AUTH": "s3cret-value"}, cwd=str(tmp_path),
                      explain=explain), seen


def test_replies_are_framed_per_command_and_multiline_replies_stay_whole(tmp_path: Path) -> None:
    s, _ = _session(tmp_path)
    try:
        assert s.ask("PING") == "PONG"
        info = s.ask("INFO", "persistence")
        assert info.splitlines() == ["# Persistence", "rdb_bgsave_in_progress:0",
                                     "rdb_last_save_time:7"]
        assert s.ask("EMPTY") == ""
        assert s.ask("PING") == "PONG"  # nothing of an earlier reply leaks into a later one
        assert s.asked == 4
    finally:
        s.close()
    assert s.proc.returncode == 0


def test_the_password_reaches_the_client_through_its_environment_only(tmp_path: Path) -> None:
    s, _ = _session(tmp_path)
    try:
        assert s.ask("SECRET") == "s3cret-value"
        assert all("s3cret" not in a for a in s.argv)
        assert "s3cret-value" not in s.env.redact("got s3cret-value")  # redacted from outputs
    finally:
        s.close()


def test_an_error_reply_is_explained_and_the_session_goes_on(tmp_path: Path) -> None:
    s, seen = _session(tmp_path)
    try:
        with pytest.raises(Explained):
            s.ask("FAIL")
        assert seen[0][1] == "redis FAIL"
        assert "ERR unknown command" in seen[0][0].stderr
        assert s.ask("PING") == "PONG"
    finally:
        s.close()


def test_a_client_that_exits_fails_the_command_instead_of_waiting(tmp_path: Path) -> None:
    s, seen = _session(tmp_path)
    start = time.monotonic()
    with pytest.raises(Explained):
        s.ask("DIE", timeout=20)
    assert time.monotonic() - start < 10
    assert seen[0][0].returncode == 3
    with pytest.raises(Explained):  # and later questions fail at once
        s.ask("PING")
    s.close()


def test_the_exit_code_is_the_clients_even_when_its_pipes_end_first(tmp_path: Path) -> None:
    """A process's pipes close as it exits, a moment before its exit code can be
    read (under load, long enough for a poll to find none: it was reported as 1)."""
    s, seen = _session(tmp_path)
    with pytest.raises(Explained):
        s.ask("DIE_SLOWLY", timeout=20)
    assert seen[0][0].returncode == 4
    s.close()


def test_no_server_fails_at_once_with_what_the_client_said(tmp_path: Path) -> None:
    s, seen = _session(tmp_path, FAKE_NO_SERVER="1")
    start = time.monotonic()
    with pytest.raises(Explained):
        s.ask("PING", timeout=20)
    assert time.monotonic() - start < 10  # not the timeout: stdout never answers
    assert "Could not connect" in seen[0][0].stderr


def test_a_reply_that_never_comes_times_out_and_kills_the_client(tmp_path: Path) -> None:
    s, _ = _session(tmp_path)
    start = time.monotonic()
    with pytest.raises(ExternalError, match="no answer in 1s"):
        s.ask("HANG", timeout=1)
    assert time.monotonic() - start < 5
    assert s.proc.poll() is not None


def test_only_plain_words_go_through_a_session(tmp_path: Path) -> None:
    assert plain(["CONFIG", "GET", "dir"])
    assert plain(["COMMAND", "LIST", "FILTERBY", "ACLCAT", "write"])
    assert not plain([])
    assert not plain(["SET", "k", "two words"])
    assert not plain(["SET", "k", "a\nb"])
    assert not plain(["SET", "k", '"quoted"'])
    s, _ = _session(tmp_path)
    try:
        with pytest.raises(ValueError):
            s.ask("ECHO", "has space")
        assert s.asked == 0
    finally:
        s.close()


def test_a_redis_cli_that_does_not_flush_into_a_pipe_falls_back_to_one_call_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # redis-cli before 6.0.17 / 6.2.5 buffers its replies when stdout is a pipe: the
    # session's probe gets no answer, and every question is a one-off call again
    from types import SimpleNamespace

    from backout.engines import redis as redis_engine

    script = tmp_path / "fake_redis_cli.py"
    unflushed = FAKE.replace("    sys.stdout.flush()\n", "")
    assert unflushed != FAKE
    script.write_text(unflushed)
    monkeypatch.setattr(redis_engine, "SESSION_PROBE_SECONDS", 1.0)
    calls: list[list[str]] = []
    # block-buffered, as redis-cli's stdio is (this shell may export PYTHONUNBUFFERED)
    env = Environment(env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})
    access = SimpleNamespace(
        env=env, db=SimpleNamespace(mode="exec", name="redis"), config=SimpleNamespace(
            project_dir=tmp_path), password=lambda: None, user=lambda: None,
        argv=lambda inner, _names: [sys.executable, str(script)],
        explain=lambda result, what: ExternalError(f"{what}: {result.stderr}"))
    real_run = proc.run

    def run(*args: object, **kwargs: object) -> proc.Result:
        calls.append(list(args[1]))  # type: ignore[call-overload]
        return real_run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(proc, "run", run)
    r = redis_engine.Redis(access)  # type: ignore[arg-type]
    start = time.monotonic()
    with r.session():
        assert r._session is None  # the probe went unanswered
        assert r.call("PING", commands=None) == ""  # a one-off call: no stdin, no command
    assert time.monotonic() - start < 10
    assert len(calls) == 1
