"""`docker compose config` is asked once per run for the same inputs (a rollback asked
it seven times), and again whenever anything it depends on changed: the compose files,
the .env, the environment's variables, the git checkout (files the compose files
reference change with it)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from backout.adapters import compose as compose_adapter
from backout.adapters.compose import Compose
from backout.environment import Environment
from backout.errors import CommandFailedError

FAKE_DOCKER = """#!/bin/sh
echo x >> "$CALLS"
printf '{"name": "p", "services": {"web": {"image": "%s"}}}' "$(cat "$IMAGE_FILE")"
"""


def _project(tmp_path: Path) -> tuple[Path, Environment, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "docker-compose.yml").write_text("services: {web: {image: a}}\n")
    (project / ".env").write_text("TAG=1\n")
    image_file = tmp_path / "image"
    image_file.write_text("a")
    calls = tmp_path / "calls"
    env = Environment(project_dir=project, env={"PATH": f"{bin_dir}:{os.environ['PATH']}",
                                                "CALLS": str(calls),
                                                "IMAGE_FILE": str(image_file)})
    return project, env, calls


def _calls(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_asked_once_for_the_same_inputs_and_each_caller_gets_its_own_copy(
        tmp_path: Path) -> None:
    project, env, calls = _project(tmp_path)
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    first = compose.config()
    first["services"]["web"]["image"] = "changed by a caller"
    again = Compose(env, project, ["docker-compose.yml"], "p", ".env").config()
    assert again["services"]["web"]["image"] == "a" and _calls(calls) == 1
    # the uninterpolated form is another question
    compose.uninterpolated_config()
    assert _calls(calls) == 2
    # another run (another Environment) asks again
    fresh = Environment(project_dir=project, env=dict(env.env))
    Compose(fresh, project, ["docker-compose.yml"], "p", ".env").config()
    assert _calls(calls) == 3


def test_asked_again_when_anything_it_depends_on_changed(tmp_path: Path) -> None:
    project, env, calls = _project(tmp_path)
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    compose.config()
    changes = [
        lambda: (project / "docker-compose.yml").write_text("services: {web: {image: b}}\n"),
        lambda: (project / ".env").write_text("TAG=2\n"),
        lambda: (project / ".git" / "HEAD").write_text("0123abcd\n"),  # a checkout
        lambda: (project / ".git" / "index").write_text("index\n"),
        lambda: env.env.update(TAG="3"),  # the environment wins over .env in Compose
    ]
    for n, change in enumerate(changes, start=2):
        change()
        (tmp_path / "image").write_text(f"v{n}")
        assert compose.config()["services"]["web"]["image"] == f"v{n}"
        assert _calls(calls) == n
    compose.config()
    assert _calls(calls) == len(changes) + 1  # nothing changed since: the memo answers


def test_a_worktree_checkout_is_followed_to_its_git_directory(tmp_path: Path) -> None:
    project, env, calls = _project(tmp_path)
    (project / ".git" / "HEAD").unlink()
    (project / ".git").rmdir()
    gitdir = tmp_path / "main.git" / "worktrees" / "project"
    gitdir.mkdir(parents=True)
    (gitdir / "HEAD").write_text("aaaa\n")
    (project / ".git").write_text(f"gitdir: {gitdir}\n")
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    compose.config()
    (gitdir / "HEAD").write_text("bbbb\n")
    compose.config()
    assert _calls(calls) == 2


def test_an_answer_is_kept_for_a_while_only(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor runs for days on one Environment: a file the fingerprint cannot
    see (an untracked env_file) still reaches it."""
    project, env, calls = _project(tmp_path)
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    clock = [1000.0]
    monkeypatch.setattr(compose_adapter.time, "monotonic", lambda: clock[0])
    compose.config()
    clock[0] += compose_adapter.CONFIG_MEMO_SECONDS - 1
    compose.config()
    assert _calls(calls) == 1
    clock[0] += 2
    compose.config()
    assert _calls(calls) == 2


def test_the_project_env_counts_without_an_env_file_setting(tmp_path: Path) -> None:
    """With env_file = "" backout passes no --env-file, and Compose reads .env anyway."""
    project, env, calls = _project(tmp_path)
    compose = Compose(env, project, ["docker-compose.yml"], "p", None)
    compose.config()
    (project / ".env").write_text("TAG=9\n")
    compose.config()
    assert _calls(calls) == 2


def test_a_checkout_or_stash_by_backout_forgets_every_answer(tmp_path: Path) -> None:
    """`rollback emergency` stashes (untracked files the compose files read may go
    without HEAD or the index changing) and checks out: nothing asked before holds."""
    import subprocess

    from backout.adapters.git import Git, GitWrite

    project, env, _calls_file = _project(tmp_path)
    (project / ".git" / "HEAD").unlink()
    (project / ".git").rmdir()
    for argv in (["init", "-q"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit",
                                  "-q", "--allow-empty", "-m", "one"]):
        subprocess.run(["git", "-C", str(project), *argv], check=True)
    git = GitWrite(Git(env, project))
    (project / "untracked.env").write_text("X=1\n")
    env.memo["an answer"] = (0.0, "{}")
    git.stash_all("backout test", [])
    assert env.memo == {}
    env.memo["an answer"] = (0.0, "{}")
    git.checkout_detached(git.head() or "")
    assert env.memo == {}


SLOW_DOCKER = """#!/bin/sh
echo x >> "$CALLS"
sleep 0.3
if [ -e "$FAIL_ONCE" ]; then rm -f "$FAIL_ONCE"; echo "compose: boom" >&2; exit 1; fi
printf '{"name": "p", "services": {"web": {"image": "%s"}}}' "$(cat "$IMAGE_FILE")"
"""


def test_a_prefetched_definition_is_waited_for_not_asked_again(tmp_path: Path) -> None:
    # the credentials' variables are asked first; the definition starts beside them
    project, env, calls = _project(tmp_path)
    (tmp_path / "bin" / "docker").write_text(SLOW_DOCKER)
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    compose.prefetch_config()
    compose.prefetch_config()  # already under way: not a second run
    for _ in range(100):  # the run started by itself, before anyone asked
        if _calls(calls):
            break
        threading.Event().wait(0.05)
    assert _calls(calls) == 1
    assert compose.config()["services"]["web"]["image"] == "a"
    assert _calls(calls) == 1


def test_a_failed_prefetch_is_asked_again(tmp_path: Path) -> None:
    project, env, calls = _project(tmp_path)
    (tmp_path / "bin" / "docker").write_text(SLOW_DOCKER)
    env.env["FAIL_ONCE"] = str(tmp_path / "fail-once")
    (tmp_path / "fail-once").write_text("")
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    compose.prefetch_config()
    assert compose.config()["services"]["web"]["image"] == "a"  # the second run's answer
    assert _calls(calls) == 2


def test_a_prefetch_that_keeps_failing_raises_the_direct_runs_error(tmp_path: Path) -> None:
    project, env, calls = _project(tmp_path)
    (tmp_path / "bin" / "docker").write_text(
        '#!/bin/sh\necho x >> "$CALLS"\necho "compose: no such file" >&2\nexit 1\n')
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    compose.prefetch_config()
    with pytest.raises(CommandFailedError, match="no such file"):
        compose.config()
    assert _calls(calls) == 2


def test_asking_the_variables_starts_the_definition(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    project, env, _ = _project(tmp_path)
    (tmp_path / "bin" / "docker").write_text(
        '#!/bin/sh\nprintf \'{"services": {"v": {"environment": {"V0": "s3cret"}}}}\'\n')
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    started: list[bool] = []
    monkeypatch.setattr(compose, "prefetch_config", lambda: started.append(True))
    assert compose.variables(["DB_PASSWORD"]) == {"DB_PASSWORD": "s3cret"}
    assert started == [True]
    assert compose.variables([]) == {} and started == [True]  # nothing asked: nothing started


def test_a_question_under_way_in_another_thread_is_waited_for_not_asked_again(
        tmp_path: Path) -> None:
    """load_config asks the definition in a thread while the credentials' question
    starts the prefetch: one Compose run, not two (twice Compose's CPU at start-up)."""
    project, env, calls = _project(tmp_path)
    (tmp_path / "bin" / "docker").write_text(SLOW_DOCKER)
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    answers: list[str] = []
    asker = threading.Thread(target=lambda: answers.append(
        compose.config()["services"]["web"]["image"]))
    asker.start()
    for _ in range(100):  # its run has started and not answered yet (it sleeps 0.3 s)
        if _calls(calls):
            break
        threading.Event().wait(0.02)
    compose.prefetch_config()
    assert compose.config()["services"]["web"]["image"] == "a"
    asker.join(10)
    assert answers == ["a"] and _calls(calls) == 1


def test_a_callers_own_failing_question_is_not_asked_twice(tmp_path: Path) -> None:
    """An invalid compose file: one Compose run and its error (a hanging one would
    otherwise cost its timeout twice)."""
    project, env, calls = _project(tmp_path)
    (tmp_path / "bin" / "docker").write_text(
        '#!/bin/sh\necho x >> "$CALLS"\necho "compose: yaml: line 3" >&2\nexit 1\n')
    compose = Compose(env, project, ["docker-compose.yml"], "p", ".env")
    with pytest.raises(CommandFailedError, match="yaml: line 3"):
        compose.config()
    assert _calls(calls) == 1
