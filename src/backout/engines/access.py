"""How backout reaches a database: inside its container (the platform's exec) or
over TCP with local client tools. Credentials travel in the child's
environment (``-e NAME`` without a value makes the docker CLI copy it from ours),
never in argv."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from backout import engines, proc
from backout.config import Config, DatabaseConfig
from backout.environment import Environment
from backout.errors import BackoutError, ExternalError, UnhealthyError
from backout.platforms.base import Platform


class EngineAccess:
    def __init__(self, env: Environment, config: Config, db: DatabaseConfig,
                 platform: Platform, container: str | None = None) -> None:
        self.env = env
        self.config = config
        self.db = db
        self.platform = platform
        # A container ID instead of the service: a throwaway restore target.
        self.container = container
        self._container_values: dict[str, str] = {}

    def secret(self, env_name: str | None) -> str | None:
        if env_name is None:
            return None
        return self.config.secrets.get(env_name)

    def password(self) -> str | None:
        if self.db.password_file:
            return self.config.secrets.get(f"file:{self.db.password_file}")
        if self.db.password_container_env:
            return self.from_container(self.db.password_container_env, secret=True)
        if self.db.password_container_file:
            text = self.container_file(self.db.password_container_file)
            value = engines.get(self.db.type).password_in_file(text)
            if value is None:
                raise ExternalError(
                    f"{self.db.name}: no password in {self.db.password_container_file} "
                    f"inside {self.db.service}",
                    fix=f"correct databases.{self.db.name}.password_container_file")
            self.env.redact.add(value)
            return value
        return self.secret(self.db.password_env)

    def user(self, default: str | None = None) -> str | None:
        if self.db.user_env:
            return self.secret(self.db.user_env)
        if self.db.user_container_env:
            return self.from_container(self.db.user_container_env, secret=False) or default
        return self.db.user or default

    def from_container(self, name: str, *, secret: bool) -> str:
        """The value of the container's own variable ``name``; a name ending in _FILE
        names a file inside the container holding it (a Docker secret), read as the
        official images read it (trailing newlines dropped). Read once per access,
        kept in memory only, and redacted from every output."""
        if name not in self._container_values:
            script = (f'f="${{{name}:-}}"; [ -n "$f" ] || exit 3; exec cat -- "$f"'
                      if name.endswith("_FILE") else
                      f'[ -n "${{{name}+x}}" ] || exit 3; printf %s "${name}"')
            result = proc.run(self.env, self.argv(["sh", "-c", script]), timeout=60, check=False,
                              what=f"read {name} in {self.db.service}",
                              cwd=str(self.config.project_dir))
            if result.returncode == 3:
                raise ExternalError(f"{self.db.name}: {name} is not set in the environment of "
                                    f"{self.db.service}",
                                    fix=f"set {name} on the service, or correct "
                                        f"databases.{self.db.name} in backout.toml")
            if not result.ok:
                raise self.explain(result, f"read {name}")
            value = result.stdout.rstrip("\n") if name.endswith("_FILE") else result.stdout
            if secret and value:
                self.env.redact.add(value)
            self._container_values[name] = value
        return self._container_values[name]

    def container_file(self, path: str) -> str:
        result = proc.run(self.env, self.argv(["cat", "--", path]), timeout=60, check=False,
                          what=f"read {path} in {self.db.service}",
                          cwd=str(self.config.project_dir))
        if not result.ok:
            raise self.explain(result, f"read {path}")
        return result.stdout

    def argv(self, inner: Sequence[str], secret_names: Sequence[str] = ()) -> list[str]:
        """argv running ``inner`` where the database's client tools are."""
        if self.db.mode == "tcp":
            return list(inner)
        if self.container is not None:
            return self.platform.container_exec_argv(self.container, inner, secret_names)
        return self.platform.exec_argv(self.db.service, inner, secret_names)

    def run(self, inner: Sequence[str], secret_env: Mapping[str, str], *, what: str,
            timeout: float = 120, input_text: str | None = None) -> proc.Result:
        result = proc.run(self.env, self.argv(inner, list(secret_env)), timeout=timeout,
                          secret_env=secret_env, check=False, what=what,
                          cwd=str(self.config.project_dir), input_text=input_text)
        if not result.ok:
            raise self.explain(result, what)
        return result

    def explain(self, result: proc.Result, what: str) -> BackoutError:
        """Turn a failed client call into an error naming the database and the fix."""
        err = self.env.redact(result.stderr)
        name = self.db.name
        # "No such container": `docker exec` into an ID the container was replaced under
        if "is not running" in err or "No container found" in err or \
                "no such service" in err.lower() or "No such container" in err:
            return UnhealthyError(f"{name}: service {self.db.service!r} is not running",
                                  fix=f"start it (docker compose up -d {self.db.service})")
        if "Access denied" in err or "WRONGPASS" in err or "NOAUTH" in err or \
                "Authentication failed" in err or "invalid password" in err or \
                "password authentication failed" in err:
            var = self.db.password_env or self.db.password_file or "the password"
            return ExternalError(f"{name}: authentication failed for user "
                                 f"{self.user('default')!r}",
                                 fix=f"check {var} in {self.config.project.env_file or 'the environment'}")
        if "Can't connect" in err or "Connection refused" in err or "Could not connect" in err:
            return ExternalError(f"{name}: database unreachable: {proc.last_line(err)}",
                                 fix=f"check that {self.db.service} is up and healthy")
        if "Cannot connect to the Docker daemon" in err:
            return ExternalError("Docker Engine is not reachable",
                                 fix="start the Docker Engine and retry")
        return ExternalError(f"{name}: {what} failed (exit {result.returncode}): "
                             f"{proc.last_line(err)}")
