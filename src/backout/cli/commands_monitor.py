"""``backout monitor``, ``backout incidents``, ``backout policy test``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from backout.cli.main import Ctx, cli, command
from backout.cli.output import emit, table
from backout.errors import ExitCode


def _render(ctx: Ctx, decision: Any, views: dict[str, Any], started: float) -> None:
    env = ctx.env
    in_level = decision.t - decision.level_since
    lines = [f"backout monitor  {time.strftime('%H:%M:%S')}  level {decision.level.value} "
             f"for {in_level:.0f}s  (up {time.monotonic() - started:.0f}s)"]
    for firing in decision.active:
        lines.append(f"  {firing.level.value:<6} {firing.rule}: {firing.reason}")
    lines.append("")
    lines.append(f"  {'SERVICE':<14} {'STATE':<8} {'HEALTH':<10} {'PROBE':<22} {'MEM%':>6} "
                 f"{'CPU%':>6} {'RESTARTS':>8} {'LOG ERR':>7}")
    for v in views.values():
        lines.append(f"  {v.service:<14} {v.state:<8} {v.health or '-'!s:<10} "
                     f"{v.probe[:22]:<22} {v.memory_percent or 0:>6.1f} {v.cpu_percent or 0:>6.1f} "
                     f"{v.restarts:>8} {v.log_errors:>7}")
    errors = [(v.service, line) for v in views.values() for line in v.last_errors]
    if errors:
        lines.append("")
        lines.append("  last matching log lines:")
        lines += [f"    {svc}: {line[:150]}" for svc, line in errors[-5:]]
    if decision.nodata:
        lines.append(f"  no data: {', '.join(decision.nodata)}")
    if env.stdout.isatty():
        env.stdout.write("\x1b[2J\x1b[H")
    env.stdout.write("\n".join(lines) + "\n")
    env.stdout.flush()


@command(cli, "monitor")
@click.option("--auto-rollback", is_flag=True,
              help="On RED, run the rule's rollback (once per incident, with a cool-down), "
                   "then verify; escalate instead of looping if verification fails.")
@click.option("--interval", type=float, default=None, help="Seconds between evaluations.")
@click.option("--duration", type=float, default=None,
              help="Stop after this many seconds (default: run until interrupted).")
@click.option("--cooldown", type=float, default=300.0, show_default=True,
              help="Minimum seconds between two automatic rollbacks.")
def monitor_cmd(ctx: Ctx, auto_rollback: bool, interval: float | None, duration: float | None,
                cooldown: float) -> int:
    """Watch the stack against the decision matrix; --json streams decisions as JSON lines.

    One screen instead of four terminals: level and the rule that set it, per-service
    health and latency, memory and CPU, restarts, error lines from the logs.
    """
    from backout.monitor.run import Monitor
    from backout.notify import Notifier
    from backout.releases import compose_for

    cfg = ctx.config
    notify = cfg.monitor.notify
    mon = Monitor(ctx.env, cfg, ctx.store, compose_for(ctx.env, cfg), cfg.monitor.effective_rules,
                  notifier=Notifier(notify.webhook_url, notify.webhook_format, notify.command),
                  auto_rollback=auto_rollback, cooldown=cooldown,
                  window=float(cfg.monitor.window_seconds))
    started = time.monotonic()

    def show(decision: Any) -> None:
        if ctx.env.json:
            ctx.env.stdout.write(ctx.env.redact(json.dumps(decision.to_json(), sort_keys=True))
                                 + "\n")
            ctx.env.stdout.flush()
        else:
            _render(ctx, decision, mon.views, started)

    last = mon.run(interval or float(cfg.monitor.interval_seconds), duration=duration,
                   on_decision=show)
    if mon.escalated:
        return ExitCode.NEEDS_HUMAN
    return ExitCode.OK if last is None or last.level.value != "RED" else ExitCode.UNHEALTHY


@command(cli, "incidents")
@click.option("--limit", default=20, show_default=True)
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


@cli.group("policy")
def policy_group() -> None:
    """Inspect and test the decision policy."""


@command(policy_group, "test")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--defaults", is_flag=True,
              help="Use the runbook's default rules, not the project's config.")
def policy_test(ctx: Ctx, file: Path, defaults: bool) -> None:
    """Replay a recorded metrics file (JSON lines: {"t": s, "signals": {...}}) through the
    policy and print each transition with the rule and values that caused it."""
    from backout.monitor.policy import DEFAULT_RULES
    from backout.monitor.replay import format_transitions, replay_file

    rules = DEFAULT_RULES if defaults else ctx.config.monitor.effective_rules
    transitions = replay_file(file, rules)
    emit(ctx.env, "policy test", {"transitions": [t.to_json() for t in transitions]},
         format_transitions(transitions) or ["no transitions"])


@command(policy_group, "show")
def policy_show(ctx: Ctx) -> None:
    """The effective rules (the runbook's matrix plus the project's [[monitor.rules]])."""
    rules = ctx.config.monitor.effective_rules
    rows = [[r.name, r.level.value, r.severity, f"{r.signal} {r.comparison} {r.threshold:g}"
             + ("x baseline" if r.relative_to_baseline else "")
             + (f" for {r.for_seconds:g}s" if r.for_seconds else "")
             + (f" x{r.consecutive}" if r.consecutive > 1 else ""), r.action] for r in rules]
    emit(ctx.env, "policy show", {"rules": [r.name for r in rules]},
         table(rows, ["RULE", "LEVEL", "SEV", "CONDITION", "ACTION"]))
