"""``backout`` entry point: the root command, the error edge, and the command tree.

Errors become one line and an exit code here and nowhere else. Commands are
thin: they build the library's inputs from options and render its results. Each
lives in a module of this package named after what it holds, found by name in
``COMMANDS`` and imported when used; those modules import ``cli.common`` only.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import click

from backout.cli.common import ENV_VARS, Ctx, global_options
from backout.environment import Environment
from backout.errors import BackoutError, ExitCode
from backout.operations import interrupt, summary
from backout.version import describe

__all__ = ["COMMANDS", "ENV_VARS", "Ctx", "cli", "entry", "main"]

INTERNAL_ERROR = 70  # a bug: an exception backout did not expect (EX_SOFTWARE)

HELP_EPILOG = """\b
Environment: every global option also comes from a variable; a flag wins over the
variable, the variable over backout.toml, backout.toml over the default.
  BACKOUT_JSON=1  BACKOUT_VERBOSE=1  BACKOUT_DEBUG=1  (0/1, true/false, yes/no)
  BACKOUT_CONFIG=PATH  BACKOUT_PROJECT_DIR=PATH
  BACKOUT_ACTOR=NAME   who is recorded in the audit log (default: the login name)
  BACKOUT_COMPOSE_DIRECT=0  Compose through the docker CLI, not its plugin directly
  BACKOUT_DUMP_BESIDE=0     MySQL dumps through docker exec, not from beside the server
  NO_COLOR=1           no colour, whatever the terminal
\b
Shell completion (commands, services, databases, release and backup ids):
  bash: eval "$(_BACKOUT_COMPLETE=bash_source backout)"   in ~/.bashrc
  zsh:  eval "$(_BACKOUT_COMPLETE=zsh_source backout)"    in ~/.zshrc
  fish: _BACKOUT_COMPLETE=fish_source backout > ~/.config/fish/completions/backout.fish
\b
Before a rollback is needed: `backout doctor` checks what it will need.
"""


def _show_version(ctx: click.Context, _p: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(describe())
        ctx.exit(0)


COMMANDS: dict[str, str] = {
    # name -> "module:attribute" under backout.cli, imported when the command is used
    # (or listed: --help, completion). The modules never import each other.
    "backup": "backups:backup_cmd",
    "backups": "backups:backups_group",
    "checkpoint": "backups:checkpoint_cmd",
    "config": "setup:config_group",
    "demo": "demo:demo_cmd",
    "deploy": "deploy:deploy_cmd",
    "doctor": "setup:doctor_cmd",
    "events": "operations:events_cmd",
    "history": "operations:history_cmd",
    "incidents": "monitor:incidents_cmd",
    "init": "setup:init_cmd",
    "monitor": "monitor:monitor_cmd",
    "policy": "monitor:policy_group",
    "release": "releases:release_group",
    "releases": "releases:releases_cmd",
    "resume": "operations:resume_cmd",
    "rollback": "rollback:rollback_group",
    "schedule": "backups:schedule_cmd",
    "status": "status:status_cmd",
    "verify": "verify:verify_cmd",
}


class LazyGroup(click.Group):
    """The command tree: each command's module is imported when the command is looked
    up (run, listed in --help, completed), from the ``COMMANDS`` table."""

    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attr = self.lazy[cmd_name].partition(":")
        found = getattr(importlib.import_module(f"backout.cli.{module}"), attr)
        if not isinstance(found, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        self.add_command(found, cmd_name)
        return found


@click.group(cls=LazyGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]}, epilog=HELP_EPILOG)
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
