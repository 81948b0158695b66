"""What every command module shares, and the only ``backout.cli`` module they import:
the Ctx (Environment, lazily loaded config/store/platform), the global options and
the ``command`` decorator, rendering (``emit``, ``table``), confirmation, and
``run_plan``: a plan run under the executor with one line per step outcome.

Two helpers stay separate modules, imported here only: ``output`` (rendering,
shared with the progress bar) and ``progress`` (the terminal progress bar, a
self-contained renderer with its own tests).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import click.shell_completion

from backout import platforms
from backout.cli.output import emit, human_size, table
from backout.cli.progress import TerminalProgress
from backout.completion import candidates
from backout.config import Config, find_config, load_config
from backout.environment import Environment
from backout.errors import BackoutError, ExitCode, InterruptedOperation, NeedsHumanError
from backout.operations import interrupt, summary
from backout.operations.executor import Executor, OperationOutcome, RunContext
from backout.operations.guard import Unfinished, guard
from backout.operations.plan import Plan, Step
from backout.rollback.common import require_yes
from backout.state import OperationLock, Store

if TYPE_CHECKING:
    from backout.platforms.base import Platform
    from backout.policy.rules import Decision

__all__ = ["Ctx", "ExitCode", "Unfinished", "command", "complete", "confirm", "emit", "group",
           "human_size", "run_plan", "table"]

F = TypeVar("F", bound=Callable[..., Any])


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


def command(name: str, group: click.Group | None = None, **kwargs: Any) -> Callable[[F], F]:
    """A command that accepts the global options too and receives the Ctx: a
    subcommand of ``group``, or (no group) a top-level command the registry of
    ``cli.main`` finds by name."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            ctx = click.get_current_context().ensure_object(Ctx)
            ctx.setup()
            return f(ctx, *args, **kw)

        make = group.command if group is not None else click.command
        return make(name, **kwargs)(global_options(wrapper))  # type: ignore[return-value]

    return decorate


def group(name: str) -> Callable[[Callable[..., Any]], click.Group]:
    """A top-level group of subcommands (``backups``, ``rollback`` ...)."""
    return click.group(name)


# ----------------------------------------------------------------- plans and their outcome


def step_line(step: Step, status: str, detail: str | None, *, tty: bool) -> str | None:
    """One line per step outcome (and, on a terminal, one as it starts). A skipped
    step says so and why: "restore redis: ok" for a restore that did not happen
    would make an operator believe the data was rolled back."""
    if status == "running":
        return f"  {step.name} …\n" if tty else None  # a log file: one line per outcome
    mark = {"done": "ok", "failed": "FAILED"}.get(status, status)
    return f"  {step.name}: {mark}" + (f" ({detail})" if detail and status != "done" else "") \
        + "\n"


def step_reports(outcome: OperationOutcome) -> list[dict[str, Any]]:
    """The ``steps`` key of a plan's JSON result: every step with what became of it."""
    return [r.to_json() for r in outcome.steps]


def run_plan(ctx: Ctx, plan: Plan, *, op_id: int | None = None,
             on_decision: Callable[[Decision, float], None] | None = None) -> OperationOutcome:
    tty = ctx.env.stderr.isatty()

    def on_step(step: Step, status: str, detail: str | None) -> None:
        line = None if ctx.env.json else step_line(step, status, detail, tty=tty)
        if line is not None:
            ctx.env.stderr.write(line)
            ctx.env.stderr.flush()

    def notify(text: str) -> None:
        # From a signal handler: straight to the descriptor, not through a buffered
        # stream the handler may have interrupted.
        os.write(ctx.env.stderr.fileno() if _has_fileno(ctx.env.stderr) else 2,
                 f"\nbackout: {text}\n".encode())

    executor = Executor(ctx.store, ctx.run_context(on_decision), on_step)
    with interrupt.handling(notify):
        if op_id is None:
            op_id = executor.start(plan)
        return executor.run(plan, op_id)


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def check_outcome(ctx: Ctx, plan: Plan, outcome: OperationOutcome, also: str | None = None) -> None:
    """Raise the error an unsuccessful operation ends with, naming the state it left
    (each database, the writers) and the next command, as `backout status` does.
    ``also``: more of the state, in words (a deploy's outcome)."""
    if outcome.status == "succeeded":
        if outcome.signal:
            ctx.env.warn(f"{outcome.signal} arrived after the last change; the operation "
                         "completed")
        return
    state = summary.describe(ctx.store, outcome.operation_id)
    where = f" at step {outcome.failed_step!r}" if outcome.failed_step else ""
    told = "; ".join(t for t in (also, summary.one_line(state)) if t)
    if outcome.status == "interrupted":
        raise InterruptedOperation(
            f"{plan.summary}: interrupted by {outcome.signal or 'a signal'}{where} "
            f"(operation #{outcome.operation_id})" + (f"; {told}" if told else ""),
            fix=(f"nothing to resume; to try again: `{state['next']}`" if state["next"]
                 else "nothing to resume"))
    error = outcome.error or BackoutError(f"{plan.summary} failed")
    if outcome.status == "unfinished":
        error.message = (f"{plan.summary}: left unfinished{where} (operation "
                         f"#{outcome.operation_id}): {error.message}"
                         + (f"; {told}" if told else ""))
        error.fix = f"{error.fix + '; then ' if error.fix else ''}run `backout resume`"
        raise error
    # One document on stdout: the error's (see main._fail); the journal has the rest.
    ctx.env.warn(f"operation #{outcome.operation_id} failed{where}"
                 + (f": {told}" if told else "") + "; see `backout history`")
    raise error


def confirm(ctx: Ctx, yes: bool, question: str) -> None:
    require_yes(yes, ctx.env.stdin_isatty and ctx.env.stderr.isatty(),
                lambda q: click.confirm(q, default=False, err=True), question)


# The outcome of a deploy is what CI branches on.
DEPLOY_EXIT = {"deployed": ExitCode.OK, "rolled_back": ExitCode.ROLLED_BACK,
               "needs_human": ExitCode.NEEDS_HUMAN}


def deploy_report(ctx: Ctx, plan: Plan, outcome: OperationOutcome, preflight: dict[str, Any] | None) -> int:
    """Render a finished (or resumed) deploy and pick its exit code."""
    # Imported here: every command imports this module, and the deploy and backup
    # modules' trees cost a rollback's start about 0.1 s.
    from backout.backup.operation import RECORD_CHECKPOINT
    from backout.deploy.operation import OUTCOME, OUTCOMES, PREVIOUS
    from backout.rollback.db import safety_key

    results = outcome.results
    final = results.get(OUTCOME) or {}
    kind = final.get("outcome")
    previous = (results.get(PREVIOUS) or {}).get("release_id")
    checkpoint = (results.get(RECORD_CHECKPOINT) or {}).get("checkpoint_id")
    data: dict[str, Any] = {
        "operation_id": outcome.operation_id, "outcome": kind, "ref": plan.params["ref"],
        "commit": plan.params["commit"], "release_id": final.get("release_id"),
        "previous_release_id": previous, "checkpoint_id": checkpoint,
        "incident": final.get("incident"), "reason": final.get("reason"),
        "ok": kind == "deployed", "steps": step_reports(outcome),
        "set_id": plan.params.get("set_id"),
        # A rollback with data: what left the live data (kept in the safety sets).
        "data_loss": [r["data_loss"] for r in results.values()
                      if isinstance(r, dict) and "data_loss" in r],
        "safety_sets": {name: r["set_id"] for name in ctx.config.databases
                        if isinstance(r := results.get(safety_key(name)), dict)
                        and "set_id" in r}}
    if preflight is not None:
        data["preflight"] = preflight
    if outcome.status in ("interrupted", "unfinished"):
        check_outcome(ctx, plan, outcome,
                      also=f"the deploy {OUTCOMES[kind]}" if kind in OUTCOMES else None)
    if kind is None or kind == "failed":
        # Nothing changed (or the journal could not say): the step's own error and code.
        error = outcome.error or BackoutError("deploy did not finish")
        raise error
    human = [f"deploy of {plan.params['ref']}: {OUTCOMES[kind]} (operation "
             f"#{outcome.operation_id})"]
    if kind != "deployed":
        human.append(f"  why: {final.get('reason')}")
        human += [f"  data loss: {w['summary']}" for w in data["data_loss"]]
        if final.get("incident"):
            human.append(f"  incident #{final['incident']}: `backout incidents`")
    if kind == "needs_human":
        err = NeedsHumanError(f"deploy of {plan.params['ref']} failed and its rollback did not "
                              f"verify: {final.get('reason')}",
                              fix="look now: `backout verify`, `backout history`, "
                                  "`docker compose logs`; then `backout rollback emergency`")
        data["error"] = {"code": err.code, "exit_code": int(err.exit_code),
                         "message": err.message, "fix": err.fix}
        ctx.env.stderr.write(f"backout: error: {err.one_line()}\n")
    emit(ctx.env, "deploy", data, human)
    return int(DEPLOY_EXIT[kind])



# ----------------------------------------------------------------- the monitor's baseline


def baseline_line(summary: dict[str, Any] | None) -> str:
    """``baseline: release 3 (captured 10:31:02): p95_latency_seconds{service=backend}=0.012``"""
    from backout.policy.baseline import describe_release  # the monitor's commands only

    if summary is None:
        return "baseline: unknown (no running containers seen yet)"
    warm = summary["warmup"]
    waiting = (f"; this release's after {warm['needed']} healthy evaluations "
               f"({warm['healthy']} so far)" if warm else "")
    if summary["captured_for"] is None:
        return f"baseline: none yet for {describe_release(summary['release'])}{waiting}"
    when = time.strftime("%H:%M:%S", time.localtime(summary["captured_at"]))
    values = ", ".join(f"{k}={v:.4g}" for k, v in sorted(summary["values"].items()))
    source = describe_release(summary["captured_for"])
    if summary["inherited"]:
        source = f"inherited from {source}"
    return f"baseline: {source} (captured {when}){waiting}: {values or 'no values'}"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[tuple[threading.Event, list[str]]]:
    """SIGTERM and SIGINT end a loop (the monitor, the schedule) after the step under way (a second SIGINT
    interrupts at once); the previous handlers are restored afterwards."""
    stop, received = threading.Event(), []

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop, received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
