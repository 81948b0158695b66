"""``backout`` entry point: global options, the error edge, and the command tree.

Errors become one line and an exit code here and nowhere else. Commands are
thin: they build the library's inputs from options and render its results.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from backout import __version__
from backout.config import Config, find_config, load_config
from backout.environment import Environment
from backout.errors import BackoutError, ExitCode
from backout.state import OperationLock, Store

F = TypeVar("F", bound=Callable[..., Any])

INTERNAL_ERROR = 70  # a bug: an exception backout did not expect (EX_SOFTWARE)


class Ctx:
    """What every command receives: the Environment and lazily loaded config/store."""

    def __init__(self) -> None:
        self.env = Environment()
        self._config: Config | None = None
        self._store: Store | None = None
        self.config_option: Path | None = None
        self.project_dir_option: Path | None = None

    def setup(self) -> None:
        env = self.env
        if self.project_dir_option is not None:
            env.project_dir = self.project_dir_option
        elif self.config_option is not None:
            env.project_dir = self.config_option.resolve().parent
        env.config_path = self.config_option
        handler = logging.StreamHandler(env.stderr)
        handler.setFormatter(logging.Formatter("backout: %(message)s"))
        log = logging.getLogger("backout")
        log.handlers[:] = [handler]
        log.setLevel(logging.DEBUG if env.debug else logging.INFO if env.verbose else logging.WARNING)
        log.propagate = False

    @property
    def config(self) -> Config:
        if self._config is None:
            path = find_config(self.env.project_dir, self.env.config_path)
            self._config = load_config(self.env, path)
        return self._config

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.config.state_dir)
        return self._store

    def mutating(self, command: str) -> OperationLock:
        """Take the operation lock for a command that changes anything."""
        from backout import faults

        lock = OperationLock(self.config.state_dir).acquire(command)
        if lock.took_over is not None:
            prev = lock.took_over
            self.env.warn(f"took over the lock left by {prev.describe()}, which is no longer running")
            self.store.record_event("lock.takeover", target=prev.command,
                                    reason="previous holder died without releasing",
                                    detail={"pid": prev.pid, "host": prev.host, "since": prev.since})
        faults.hit("lock-acquired")
        return lock


def _set_json(ctx: click.Context, _p: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Ctx).env.json = True


def _set_verbose(ctx: click.Context, _p: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Ctx).env.verbose = True


def _set_debug(ctx: click.Context, _p: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Ctx).env.debug = True


def _set_config(ctx: click.Context, _p: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(Ctx).config_option = value


def _set_project_dir(ctx: click.Context, _p: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(Ctx).project_dir_option = value


GLOBAL_OPTIONS = [
    click.option("--json", "json_", is_flag=True, expose_value=False, callback=_set_json,
                 is_eager=True, help="Machine-readable output (stable keys, see README)."),
    click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=_set_verbose,
                 is_eager=True, help="Log every external call (argv or URL, duration, exit code)."),
    click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug,
                 is_eager=True, help="Show tracebacks of unexpected errors."),
    click.option("--config", "config_", type=click.Path(path_type=Path), expose_value=False,
                 callback=_set_config, is_eager=True, help="Path to backout.toml."),
    click.option("--project-dir", type=click.Path(path_type=Path), expose_value=False,
                 callback=_set_project_dir, is_eager=True,
                 help="Directory of the compose project (default: current directory)."),
]


def global_options(f: F) -> F:
    for option in reversed(GLOBAL_OPTIONS):
        f = option(f)
    return f


def command(group: click.Group, name: str, **kwargs: Any) -> Callable[[F], F]:
    """A subcommand that accepts the global options too and receives the Ctx."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            ctx = click.get_current_context().ensure_object(Ctx)
            ctx.setup()
            return f(ctx, *args, **kw)

        return group.command(name, **kwargs)(global_options(wrapper))  # type: ignore[return-value]

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="backout")
@global_options
def cli() -> None:
    """backout: reversible, data-safe deployments for Docker Compose.

    Records every release, checkpoints data before every change, and rolls back
    a service, the whole stack or a database in one command.

    Exit codes: 0 ok, 1 warnings, 2 usage/config, 3 unhealthy, 4 locked,
    5 verification failed, 6 external failure, 7 not found, 8 rolled back,
    9 needs a human, 130 interrupted (README: Exit codes).
    """


def register() -> None:
    # Command modules attach themselves to ``cli``; imported here, not at module
    # top, so ``backout.cli.main`` has no import cycle with them.
    from backout.cli import (  # noqa: F401
        commands_backup,
        commands_config,
        commands_deploy,
        commands_monitor,
        commands_releases,
        commands_rollback,
    )


def main(argv: list[str] | None = None) -> int:
    register()
    env_holder = Ctx()
    try:
        rv = cli.main(args=argv, prog_name="backout", standalone_mode=False, obj=env_holder)
        return int(rv) if isinstance(rv, int) else int(ExitCode.OK)
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.ClickException as exc:  # usage errors: one line, exit 2
        message = exc.format_message()
        _fail(env_holder.env, "usage", message, ExitCode.USAGE,
              fix=f"see `backout {_subcommand(argv)}--help`")
        return int(ExitCode.USAGE)
    except click.exceptions.Abort:
        _fail(env_holder.env, "interrupted", "aborted", ExitCode.INTERRUPTED)
        return int(ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        message, fix = _interrupted(env_holder)
        _fail(env_holder.env, "interrupted", message, ExitCode.INTERRUPTED, fix=fix)
        return int(ExitCode.INTERRUPTED)
    except BackoutError as exc:
        if env_holder.env.debug:
            traceback.print_exc(file=env_holder.env.stderr)
        _fail(env_holder.env, exc.code, exc.message, exc.exit_code, fix=exc.fix)
        return int(exc.exit_code)
    except Exception as exc:
        if env_holder.env.debug:
            env_holder.env.stderr.write(env_holder.env.redact(traceback.format_exc()))
        _fail(env_holder.env, "internal", f"internal error: {type(exc).__name__}: {exc}",
              INTERNAL_ERROR, fix="this is a bug; rerun with --debug and report the traceback")
        return INTERNAL_ERROR


def _interrupted(holder: Ctx) -> tuple[str, str | None]:
    """The message of an interrupt that stopped backout at once (a second Ctrl-C)."""
    from backout.operations import interrupt, summary

    running = interrupt.current().operation
    if running is None:
        return "interrupted", None
    op_id, kind = running
    state = summary.describe(holder._store, op_id) if holder._store is not None else {}
    step = state.get("stopped_at")
    told = summary.one_line(state) if state else ""
    text = (f"interrupted again: operation #{op_id} ({kind}) stopped at once"
            + (f" in step {step!r}" if step else "") + "; it is unfinished"
            + (f": {told}" if told else ""))
    return text, "run `backout resume` to finish it (`backout status` shows it)"


def _subcommand(argv: list[str] | None) -> str:
    args = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")]
    return f"{args[0]} " if args else ""


def _fail(env: Environment, code: str, message: str, exit_code: int, fix: str | None = None) -> None:
    line = " ".join(message.split())
    if fix:
        line += f" (fix: {fix})"
    line = env.redact(line)
    if env.json:
        payload = {"ok": False, "error": {"code": code, "exit_code": int(exit_code),
                                          "message": env.redact(message), "fix": fix}}
        env.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
    env.stderr.write(f"backout: error: {line}\n")
    env.stderr.flush()


def entry() -> None:
    sys.exit(main())
