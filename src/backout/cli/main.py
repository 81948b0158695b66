"""``backout`` entry point: global options, the error edge, and the command tree.

Errors become one line and an exit code here and nowhere else. Commands are
thin: they build the library's inputs from options and render its results.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import click.shell_completion

from backout import platforms
from backout.config import Config, find_config, load_config
from backout.environment import Environment
from backout.errors import BackoutError, ExitCode
from backout.operations.executor import Executor, RunContext
from backout.operations.guard import Unfinished, guard
from backout.state import OperationLock, Store

if TYPE_CHECKING:
    from backout.platforms.base import Platform
    from backout.policy.rules import Decision

F = TypeVar("F", bound=Callable[..., Any])

INTERNAL_ERROR = 70  # a bug: an exception backout did not expect (EX_SOFTWARE)

HELP_EPILOG = """\b
Environment: every global option also comes from a variable; a flag wins over the
variable, the variable over backout.toml, backout.toml over the default.
  BACKOUT_JSON=1  BACKOUT_VERBOSE=1  BACKOUT_DEBUG=1  (0/1, true/false, yes/no)
  BACKOUT_CONFIG=PATH  BACKOUT_PROJECT_DIR=PATH
  BACKOUT_ACTOR=NAME   who is recorded in the audit log (default: the login name)
  NO_COLOR=1           no colour, whatever the terminal
\b
Shell completion (commands, services, databases, release and backup ids):
  bash: eval "$(_BACKOUT_COMPLETE=bash_source backout)"   in ~/.bashrc
  zsh:  eval "$(_BACKOUT_COMPLETE=zsh_source backout)"    in ~/.zshrc
  fish: _BACKOUT_COMPLETE=fish_source backout > ~/.config/fish/completions/backout.fish
\b
Before a rollback is needed: `backout doctor` checks what it will need.
"""


class Ctx:
    """What every command receives: the Environment and lazily loaded config/store."""

    def __init__(self) -> None:
        self.env = Environment()
        self._config: Config | None = None
        self._store: Store | None = None
        self.config_option: Path | None = None
        self.project_dir_option: Path | None = None
        self.from_flags: set[str] = set()  # global options given as flags (beat variables)

    def setup(self) -> None:
        env = self.env
        if self.project_dir_option is not None:
            env.project_dir = self.project_dir_option
        elif self.config_option is not None:
            env.project_dir = self.config_option.resolve().parent
        env.config_path = self.config_option
        if not env.json and env.stderr.isatty():  # a bar for transfers; never in a log or JSON
            from backout.cli.progress import TerminalProgress

            env.progress = TerminalProgress(env.stderr)
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

    @property
    def platform(self) -> Platform:
        """What runs the stack (``[platform] kind``); made anew for the current config."""
        return platforms.for_config(self.env, self.config)

    def run_context(self, on_decision: Callable[[Decision, float], None] | None = None
                    ) -> RunContext:
        """What a plan's actions get: this command's env, config, store and platform."""
        return RunContext(self.env, self.config, self.store, self.platform,
                          on_decision=on_decision)

    def mutating(self, command: str, unfinished: Unfinished = Unfinished.REFUSE,
                 abandon_with: Executor | None = None) -> AbstractContextManager[OperationLock]:
        """The operation guard (lock, audited takeover, interrupted operations) for a
        command that changes anything."""
        return guard(self.env, self.store, self.config.state_dir, command,
                     unfinished=unfinished, abandon_with=abandon_with)


# Every global option, its environment variable and where its value goes. Precedence:
# a flag on the command line > the environment variable > backout.toml > the default.
# The options are accepted before and after the subcommand; a flag given anywhere
# wins over the variable, wherever the variable is read.
ENV_VARS = {"json": "BACKOUT_JSON", "verbose": "BACKOUT_VERBOSE", "debug": "BACKOUT_DEBUG",
            "config": "BACKOUT_CONFIG", "project_dir": "BACKOUT_PROJECT_DIR"}


def _apply(target: Callable[[Ctx, Any], None]) -> Callable[[click.Context, click.Parameter, Any],
                                                           None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        name = str(param.name)
        source = ctx.get_parameter_source(name)
        holder = ctx.ensure_object(Ctx)
        if source == click.core.ParameterSource.COMMANDLINE:
            holder.from_flags.add(name)
        elif source != click.core.ParameterSource.ENVIRONMENT or name in holder.from_flags:
            return  # the default, or a variable under a flag given elsewhere
        target(holder, value)

    return callback


def _set(attr: str) -> Callable[[Ctx, Any], None]:
    def assign(holder: Ctx, value: Any) -> None:
        setattr(holder.env, attr, bool(value))

    return assign


def _show_version(ctx: click.Context, _p: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from backout.version import describe

        click.echo(describe())
        ctx.exit(0)


GLOBAL_OPTIONS = [
    click.option("--json/--no-json", "json", default=False, expose_value=False,
                 callback=_apply(_set("json")), is_eager=True, envvar=ENV_VARS["json"],
                 help="Machine-readable output (stable keys, see README). [env: BACKOUT_JSON]"),
    click.option("--verbose/--no-verbose", "-v", "verbose", default=False, expose_value=False,
                 callback=_apply(_set("verbose")), is_eager=True, envvar=ENV_VARS["verbose"],
                 help="Log every external call (argv or URL, duration, exit code). "
                      "[env: BACKOUT_VERBOSE]"),
    click.option("--debug/--no-debug", "debug", default=False, expose_value=False,
                 callback=_apply(_set("debug")), is_eager=True, envvar=ENV_VARS["debug"],
                 help="Show tracebacks of unexpected errors. [env: BACKOUT_DEBUG]"),
    click.option("--config", "config", type=click.Path(path_type=Path), expose_value=False,
                 callback=_apply(lambda h, v: setattr(h, "config_option", v)), is_eager=True,
                 envvar=ENV_VARS["config"], help="Path to backout.toml. [env: BACKOUT_CONFIG]"),
    click.option("--project-dir", "project_dir", type=click.Path(path_type=Path),
                 expose_value=False, is_eager=True, envvar=ENV_VARS["project_dir"],
                 callback=_apply(lambda h, v: setattr(h, "project_dir_option", v)),
                 help="Directory of the compose project (default: current directory). "
                      "[env: BACKOUT_PROJECT_DIR]"),
]


def complete(kind: str) -> Callable[[click.Context, click.Parameter, str],
                                    list[click.shell_completion.CompletionItem]]:
    """Dynamic shell completion of an argument (see backout.completion): the project
    is the one the command line names so far (--project-dir, --config, their
    variables) or the current directory."""

    def shell_complete(ctx: click.Context, _param: click.Parameter,
                       incomplete: str) -> list[click.shell_completion.CompletionItem]:
        from backout.completion import candidates

        holder = ctx.find_object(Ctx) or Ctx()
        config = holder.config_option
        project = holder.project_dir_option or (config.resolve().parent if config else Path())
        return [click.shell_completion.CompletionItem(value)
                for value in candidates(kind, project.resolve(), config, incomplete)]

    return shell_complete


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=HELP_EPILOG)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_show_version, help="Show the version (and, in a checkout, the commit).")
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


BOOLEAN_WORDS = {"", "0", "1", "true", "false", "t", "f", "yes", "no", "y", "n", "on", "off"}


def _check_boolean_variables() -> None:
    """A BACKOUT_* switch with a value that is not a boolean: named as the variable
    (click would blame the flag, which the operator never typed)."""
    for name in ("json", "verbose", "debug"):
        var = ENV_VARS[name]
        value = os.environ.get(var)
        if value is not None and value.strip().lower() not in BOOLEAN_WORDS:
            raise click.UsageError(f"{var}={value!r} is not a boolean: use 1 or 0 (true/false, "
                                   "yes/no, on/off)")


def main(argv: list[str] | None = None) -> int:
    register()
    env_holder = Ctx()
    try:
        _check_boolean_variables()
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
