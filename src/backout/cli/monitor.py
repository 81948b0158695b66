"""``backout monitor``, ``backout incidents``, ``backout policy test|show``."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from backout.cli.common import (
    Ctx,
    ExitCode,
    baseline_line,
    command,
    emit,
    group,
    stop_on_signals,
    table,
)
from backout.errors import InterruptedOperation, LockedError, UsageError
from backout.monitor.run import Monitor
from backout.notify import Notifier
from backout.policy.replay import format_transitions, replay_file
from backout.policy.rules import DEFAULT_RULES
from backout.state import OperationLock
from backout.state.lock import MONITOR_LOCK_NAME


def _percent(value: float | None) -> str:
    """A column of six: unknown (no stats figures) is a dash, not 0.0."""
    return f"{'-':>6}" if value is None else f"{value:>6.1f}"


def _render(ctx: Ctx, decision: Any, mon: Any, started: float) -> None:
    env = ctx.env
    views = mon.views
    in_level = decision.t - decision.level_since
    lines = [f"backout monitor  {time.strftime('%H:%M:%S')}  level {decision.level.value} "
             f"for {in_level:.0f}s  (up {time.monotonic() - started:.0f}s)"]
    for firing in decision.active:
        lines.append(f"  {firing.level.value:<6} {firing.rule}: {firing.reason}")
    lines.append(f"  {baseline_line(mon.baseline_summary())}")
    lines.append("")
    lines.append(f"  {'SERVICE':<14} {'STATE':<8} {'HEALTH':<10} {'PROBE':<22} {'MEM%':>6} "
                 f"{'CPU%':>6} {'RESTARTS':>8} {'LOG ERR':>7}")
    for v in views.values():
        lines.append(f"  {v.service:<14} {v.state:<8} {v.health or '-'!s:<10} "
                     f"{v.probe[:22]:<22} {_percent(v.memory_percent)} {_percent(v.cpu_percent)} "
                     f"{v.restarts:>8} {v.log_errors:>7}")
    errors = [(v.service, line) for v in views.values() for line in v.last_errors]
    if errors:
        lines.append("")
        lines.append("  last matching log lines:")
        lines += [f"    {svc}: {line[:150]}" for svc, line in errors[-5:]]
    if decision.nodata:
        lines.append(f"  no data: {', '.join(decision.nodata)}")
    if env.stdout.isatty():  # a live screen; to a file or journal: one block per evaluation
        env.stdout.write("\x1b[2J\x1b[H")
    env.stdout.write("\n".join(lines) + "\n")
    env.stdout.flush()


@contextlib.contextmanager
def _monitor_lock(ctx: Ctx, pid_file: Path | None) -> Iterator[None]:
    """One monitor per project (two would open every incident twice), and the pid file."""
    lock = OperationLock(ctx.config.state_dir, MONITOR_LOCK_NAME)
    try:
        lock.acquire("backout monitor")
    except LockedError:
        holder = lock.holder()
        raise LockedError(
            f"a monitor already watches this project: "
            f"{holder.describe() if holder else 'another process'}",
            fix="stop it first (systemctl stop backout-monitor, or kill its pid); "
                "`backout status` shows its level and incidents") from None
    try:
        if pid_file is not None:
            tmp = pid_file.with_name(f".{pid_file.name}.{os.getpid()}")
            try:
                tmp.write_text(f"{os.getpid()}\n")
                tmp.replace(pid_file)
            except OSError as exc:
                raise UsageError(f"cannot write the pid file {pid_file}: {exc.strerror}",
                                 fix="create its directory or pass another --pid-file") from None
        yield
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                if pid_file.read_text().strip() == str(os.getpid()):
                    pid_file.unlink()
        lock.release()


@command("monitor")
@click.option("--auto-rollback", is_flag=True,
              help="On RED, run the rule's rollback (once per incident, with a cool-down), "
                   "then verify; escalate instead of looping if verification fails.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds between evaluations (default: [monitor] interval_seconds).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds (default: run until interrupted).")
@click.option("--cooldown", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Minimum seconds between two automatic rollbacks.")
@click.option("--pid-file", type=click.Path(path_type=Path), default=None,
              help="Write the monitor's pid here while it runs (removed on exit).")
def monitor_cmd(ctx: Ctx, auto_rollback: bool, interval: float | None, duration: float | None,
                cooldown: float, pid_file: Path | None) -> int:
    """Watch the stack against the decision matrix; --json streams decisions as JSON lines.

    One screen instead of four terminals: level and the rule that set it, per-service
    health and latency, memory and CPU, restarts, error lines from the logs, and the
    baseline relative rules compare with. Runs unattended too (no terminal needed):
    SIGTERM or SIGINT stop it after the evaluation under way, with exit code 130.
    """
    cfg = ctx.config
    notify = cfg.monitor.notify
    with _monitor_lock(ctx, pid_file), stop_on_signals() as (stop, received):
        mon = Monitor(ctx.env, cfg, ctx.store, ctx.platform,
                      cfg.monitor.effective_rules,
                      notifier=Notifier(notify.webhook_url, notify.webhook_format,
                                        notify.command),
                      auto_rollback=auto_rollback, cooldown=cooldown,
                      window=float(cfg.monitor.window_seconds),
                      baseline_evaluations=cfg.monitor.baseline_evaluations)
        started = time.monotonic()
        evaluations = 0

        def show(decision: Any) -> None:
            nonlocal evaluations
            evaluations += 1
            if ctx.env.json:
                line = {**decision.to_json(), "baseline": mon.baseline_summary(),
                        "evaluation_s": mon.evaluation_s}
                ctx.env.stdout.write(ctx.env.redact(json.dumps(line, sort_keys=True)) + "\n")
                ctx.env.stdout.flush()
            else:
                _render(ctx, decision, mon, started)

        last = mon.run(float(cfg.monitor.interval_seconds) if interval is None else interval,
                       duration=duration,
                       on_decision=show, stop=stop)
    if mon.escalated:
        return ExitCode.NEEDS_HUMAN
    if received:
        raise InterruptedOperation(
            f"monitor stopped by {received[0]} after {evaluations} evaluation(s); "
            f"policy state saved (level {last.level.value if last else 'unknown'})",
            fix="start `backout monitor` again: it resumes from the saved state without "
                "re-firing open incidents")
    return ExitCode.OK if last is None or last.level.value != "RED" else ExitCode.UNHEALTHY


@command("incidents")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def incidents_cmd(ctx: Ctx, limit: int) -> None:
    """Incidents with their timeline: detected, actions, verified, resolved."""
    incidents = ctx.store.incidents(limit)
    human: list[str] = []
    for inc in incidents:
        human.append(f"#{inc['id']} {inc['level']} {inc['severity']} {inc['rule']} "
                     f"({inc['status']}) opened {inc['opened_at']}: {inc['reason']}")
        for ev in inc["timeline"]:
            human.append(f"    {ev['ts']}  {ev['kind']:<13} "
                         f"{json.dumps(ev['detail'], sort_keys=True)[:140]}")
    emit(ctx.env, "incidents", {"incidents": incidents}, human or ["no incidents"])


@group("policy")
def policy_group() -> None:
    """Inspect and test the decision policy."""

@command("test", policy_group)
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--defaults", is_flag=True,
              help="Use the runbook's default rules, not the project's config.")
def policy_test(ctx: Ctx, file: Path, defaults: bool) -> None:
    """Replay a recorded metrics file (JSON lines: {"t": s, "signals": {...}}) through the
    policy and print each transition with the rule and values that caused it."""
    rules = DEFAULT_RULES if defaults else ctx.config.monitor.effective_rules
    transitions = replay_file(file, rules)
    emit(ctx.env, "policy test", {"transitions": [t.to_json() for t in transitions]},
         format_transitions(transitions) or ["no transitions"])


@command("show", policy_group)
def policy_show(ctx: Ctx) -> None:
    """The effective rules (the runbook's matrix plus the project's [[monitor.rules]])."""
    rules = ctx.config.monitor.effective_rules
    rows = [[r.name, r.level.value, r.severity, f"{r.signal} {r.condition()}"
             + (f" for {r.for_seconds:g}s" if r.for_seconds else "")
             + (f" x{r.consecutive}" if r.consecutive > 1 else ""), r.action,
             "yes" if r.relative_to_baseline else ""] for r in rules]
    evaluations = ctx.config.monitor.baseline_evaluations
    human = table(rows, ["RULE", "LEVEL", "SEV", "CONDITION", "ACTION", "BASELINE"])
    if any(r.relative_to_baseline for r in rules):
        human.append(f"BASELINE yes: the threshold is a factor of the baseline, the median of "
                     f"the signal over {evaluations} healthy evaluations in a row of the "
                     "running release (`backout status` shows it)")
    emit(ctx.env, "policy show", {"rules": [r.name for r in rules],
                                  "relative": [r.name for r in rules if r.relative_to_baseline],
                                  "baseline_evaluations": evaluations}, human)
