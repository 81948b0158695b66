"""Docker Compose v2, through its CLI: one project's argv, ``config`` and ``ps``.

Only the Compose platform (``backout.platforms.compose``) uses this module; the
rest of backout asks the platform.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from backout import proc
from backout.adapters.docker import ENGINE_FIX, Docker
from backout.environment import Environment
from backout.errors import CommandFailedError, DockerUnavailableError, ExternalError
from backout.platforms.base import ContainerInfo

CONFIG_MEMO_SECONDS = 30.0
_MEMO_LOCK = threading.Lock()  # the memo of config answers: one question per key at a time
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _git_dir(directory: Path) -> Path | None:
    """The git directory of the checkout holding ``directory`` (a worktree's own)."""
    for parent in (directory, *directory.parents):
        dot = parent / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = dot.read_text(encoding="utf-8", errors="replace").strip()
            if text.startswith("gitdir:"):
                return (parent / text.removeprefix("gitdir:").strip()).resolve()
            return None
    return None


class Compose:
    """One Compose project: its files, project directory and project name."""

    def __init__(self, env: Environment, project_dir: Path, files: Sequence[str],
                 project_name: str | None = None, env_file: str | None = None) -> None:
        self.env = env
        self.project_dir = project_dir
        self.files = list(files)
        self.project_name = project_name
        self.env_file = env_file

    def argv(self, *args: str) -> list[str]:
        argv = ["docker", "compose", "--project-directory", str(self.project_dir)]
        for f in self.files:
            argv += ["-f", str(self.project_dir / f)]
        if self.env_file:
            argv += ["--env-file", str(self.project_dir / self.env_file)]
        if self.project_name:
            argv += ["-p", self.project_name]
        return argv + list(args)

    def run(self, *args: str, timeout: float = 300, check: bool = True,
            what: str | None = None) -> proc.Result:
        try:
            return proc.run(self.env, self.argv(*args), timeout=timeout, check=check,
                            cwd=str(self.project_dir), what=what or f"docker compose {args[0]}")
        except CommandFailedError as exc:
            if "Cannot connect to the Docker daemon" in exc.message:
                raise DockerUnavailableError(
                    "Docker Engine is not reachable", fix=ENGINE_FIX) from exc
            if "is not a docker command" in exc.message or "unknown command" in exc.message:
                raise ExternalError("Docker Compose v2 is not installed",
                                    fix="install the docker compose plugin") from exc
            raise

    def config(self) -> dict[str, Any]:
        """The resolved configuration (``docker compose config --format json``).

        Needs no engine. Variable interpolation uses the project's .env, so the
        result may contain secrets: callers must not store it without redaction.
        """
        data: dict[str, Any] = json.loads(self._config_text("config", "--format", "json"))
        return data

    def uninterpolated_config(self) -> dict[str, Any]:
        """The configuration as written: ``${VAR}`` kept (``--no-interpolate``), so a
        credential's variable name can be told from a literal. Holds no .env value."""
        data: dict[str, Any] = json.loads(
            self._config_text("config", "--no-interpolate", "--format", "json"))
        return data

    def _config_text(self, *args: str) -> str:
        """``docker compose config`` asked once for the same inputs: a rollback asked it
        seven times (0.15 s each). Each caller parses its own copy. An answer is kept
        CONFIG_MEMO_SECONDS: a file the fingerprint cannot see (an untracked `env_file:`
        edited by hand) reaches a long run (the monitor) that much later at most. A
        question already under way (another thread's, the prefetch) is waited for,
        not asked again: two at once were twice Compose's CPU at start-up."""
        key = self._config_key(args)
        answer, mine = self._claim(key)
        if mine:
            self._answer(key, answer, args)
            return answer.result()  # its own failure raised as it is: not asked twice
        with contextlib.suppress(Exception):  # another's failed: asked again, raised
            return answer.result(timeout=60)
        answer, mine = self._claim(key, failed=answer)
        if mine:
            self._answer(key, answer, args)
        return answer.result(timeout=60)

    def _claim(self, key: tuple[object, ...], *, failed: Future[str] | None = None
               ) -> tuple[Future[str], bool]:
        """The answer kept or under way for ``key``, or a new one this caller must give
        (True); ``failed``: an answer that failed, asked again unless another caller
        already has."""
        now = time.monotonic()
        with _MEMO_LOCK:
            kept = self.env.memo.get(key)
            if isinstance(kept, tuple) and now - kept[0] < CONFIG_MEMO_SECONDS \
                    and isinstance(kept[1], Future) and kept[1] is not failed:
                return kept[1], False
            for old in [k for k, v in self.env.memo.items()  # a long run keeps no old answers
                        if isinstance(v, tuple) and now - v[0] >= CONFIG_MEMO_SECONDS]:
                del self.env.memo[old]
            answer: Future[str] = Future()
            self.env.memo[key] = (now, answer)
            return answer, True

    def _answer(self, key: tuple[object, ...], answer: Future[str], args: Sequence[str]) -> None:
        try:
            answer.set_result(self.run(*args, timeout=60).stdout)
        except Exception as exc:  # handed to whoever waits for the answer
            answer.set_exception(exc)
        except BaseException as exc:  # Ctrl-C: not an answer to keep
            with _MEMO_LOCK:
                if isinstance(kept := self.env.memo.get(key), tuple) and kept[1] is answer:
                    del self.env.memo[key]
            answer.set_exception(exc)
            raise

    def _config_key(self, args: Sequence[str]) -> tuple[object, ...]:
        return ("compose config", tuple(self.argv(*args)), self.inputs_fingerprint())

    def prefetch_config(self) -> None:
        """Start asking ``config`` (the definition) in a thread: a command that needs
        the variables (its credentials) asks the definition next, and the two Compose
        runs (0.1-0.2 s each) then overlap. ``_config_text`` takes the answer."""
        args = ("config", "--format", "json")
        key = self._config_key(args)
        answer, mine = self._claim(key)
        if mine:
            threading.Thread(target=self._answer, args=(key, answer, args), daemon=True,
                             name="compose config").start()

    def inputs_fingerprint(self) -> str:
        """What the resolved configuration depends on: the compose files and the .env
        as they are now, the variables of the environment, and the git checkout (a
        commit checked out mid-run, as `rollback emergency` does, changes files the
        compose files reference: `env_file:`, `extends:`, `include:`)."""
        digest = hashlib.sha256()
        paths = [self.project_dir / f for f in self.files]
        if self.env_file:
            paths.append(self.project_dir / self.env_file)
        paths.append(self.project_dir / ".env")  # read by Compose without --env-file too
        git = (Path(self.env.env["GIT_DIR"]) if self.env.env.get("GIT_DIR")
               else _git_dir(self.project_dir))
        if git is not None:
            paths += [git / "HEAD", git / "index"]
        for path in paths:
            digest.update(str(path).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError as exc:  # missing: Compose itself will say so
                digest.update(type(exc).__name__.encode())
            digest.update(b"\0")
        for name, value in sorted(self.env.env.items()):
            digest.update(f"{name}={value}\0".encode())
        return digest.hexdigest()

    def variables(self, names: Sequence[str]) -> dict[str, str]:
        """The values Compose itself gives ``names`` (the project's .env, the process
        environment first, as Compose reads them: quotes, escapes, comments, multi-line
        values, interpolation), for those that are set. Compose is asked about a
        throwaway file that only references the names, so the project's own files
        need not even be valid. Values stay in memory (callers redact them)."""
        if not names:
            return {}
        for name in names:
            if not VARIABLE.fullmatch(name):
                raise ValueError(f"not a variable name: {name!r}")
        self.prefetch_config()
        marker = f"backout-unset-{uuid.uuid4().hex}"
        environment = {}
        for i, name in enumerate(names):
            environment[f"V{i}"] = f"${{{name}}}"
            environment[f"U{i}"] = f"${{{name}-{marker}}}"
        doc = {"services": {"v": {"image": "scratch", "environment": environment}}}
        with tempfile.TemporaryDirectory(prefix="backout-vars-") as tmp:
            probe = Path(tmp) / "variables.json"
            probe.write_text(json.dumps(doc), encoding="utf-8")
            argv = ["docker", "compose", "--project-directory", str(self.project_dir),
                    "-f", str(probe)]
            if self.env_file:
                argv += ["--env-file", str(self.project_dir / self.env_file)]
            # Compose gives the caller's environment precedence over .env; children get
            # an environment without credential-named variables, so these go explicitly.
            passed = {n: self.env.env[n] for n in names if n in self.env.env}
            result = proc.run(self.env, [*argv, "config", "--format", "json"], timeout=60,
                              cwd=str(self.project_dir), what="docker compose config (variables)",
                              secret_env=passed)
        got = json.loads(result.stdout)["services"]["v"].get("environment") or {}
        out = {}
        for i, name in enumerate(names):
            if got.get(f"U{i}") == marker:
                continue
            # `config` writes a literal $ as $$ (its output is again a compose file)
            out[name] = str(got.get(f"V{i}", "")).replace("$$", "$")
        return out

    def containers(self, *services: str) -> list[ContainerInfo]:
        """Every container of the project (all states), inspected."""
        result = self.run("ps", "-a", "-q", *services, timeout=60)
        ids = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        return Docker(self.env).inspect_containers(ids)

