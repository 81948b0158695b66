"""``backout status``."""

from __future__ import annotations

from typing import Any

from backout.cli.common import Ctx, ExitCode, baseline_line, command, emit
from backout.operations import summary
from backout.status import read_status


@command("status")
def status_cmd(ctx: Ctx) -> int:
    """Current release, lock holder and state store, without a running monitor.

    Exit 1 (warnings) when part of the status could not be read: the Docker Engine
    does not answer (a script polling `status` sees that Docker is down)."""
    s = read_status(ctx.config, ctx.store, ctx.platform)
    for warning in s.warnings:
        ctx.env.warn(warning)
    rel, cp, holder, monitor, level = s.release, s.checkpoint, s.lock, s.monitor, s.level
    last, last_state = s.last_operation, s.last_state
    human = [f"project:    {ctx.config.project_dir}",
             f"release:    {rel['id']} at {(rel['git_commit'] or '-')[:12]} ({rel['status']})" if rel
             else "release:    none recorded",
             f"checkpoint: {cp.id} ({cp.created_at}, set {cp.set_id})" if cp
             else "checkpoint: none",
             f"lock:       held by {holder.describe()}" if holder else "lock:       free"]
    human.append(f"level:      {level['level']} (last evaluated {level['t']:.0f})" if level
                 else "level:      unknown (no monitor has run)")
    human.append(f"monitor:    running: {monitor.describe()}" if monitor
                 else "monitor:    not running")
    if s.baseline is not None:
        human.append(f"{baseline_line(s.baseline).replace('baseline: ', 'baseline:   ', 1)}")
    if s.backups is not None:
        human += _backup_lines(s.backups)
    for inc in s.open_incidents:
        human.append(f"INCIDENT:   #{inc['id']} {inc['level']} {inc['severity']} {inc['rule']} "
                     f"({inc['status']}) since {inc['opened_at']}")
    for op in s.interrupted:
        human.append(f"INTERRUPTED: operation #{op['id']} ({op['kind']}) did not finish: "
                     "run `backout resume`")
    if last is not None and last_state is not None \
            and last["status"] in ("interrupted", "failed", "running"):
        human.append(f"last op:    #{last['id']} ({last['kind']}) {last['status']}"
                     + (f" at step {last_state['stopped_at']!r}"
                        if last_state["stopped_at"] else ""))
        human += [f"           {line.strip()}" for line in summary.lines(last_state)]
    for svc, d in (s.drift or {}).items():
        human.append(f"DRIFT: {svc} runs {d['running'][7:19]}, the compose files name "
                     f"{d['compose_image']} ({d['compose_file'][7:19]})")
    data: dict[str, Any] = {
        "checkpoint": {"id": cp.id, "set_id": cp.set_id, "created_at": cp.created_at}
        if cp else None,
        "interrupted": [{"id": op["id"], "kind": op["kind"]} for op in s.interrupted],
        "last_operation": {"id": last["id"], "kind": last["kind"], "status": last["status"],
                           "error": last["error"], "state": last_state} if last else None,
        "level": level,
        "monitor": {"pid": monitor.pid, "host": monitor.host, "since": monitor.since}
        if monitor else None,
        "baseline": s.baseline,
        "open_incidents": [{"id": i["id"], "rule": i["rule"], "level": i["level"],
                            "severity": i["severity"], "status": i["status"]}
                           for i in s.open_incidents],
        "drift": s.drift,
        "project_dir": str(ctx.config.project_dir),
        "release": {"id": rel["id"], "commit": rel["git_commit"], "status": rel["status"]}
        if rel else None,
        "lock": {"pid": holder.pid, "host": holder.host, "command": holder.command,
                 "since": holder.since} if holder else None,
        "warnings": s.warnings,
        "backups": s.backups,
    }
    emit(ctx.env, "status", data, human)
    return ExitCode.WARNINGS if s.warnings else ExitCode.OK


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    hours = seconds / 3600
    return f"{seconds / 60:.0f} min ago" if hours < 2 else (
        f"{hours:.1f} h ago" if hours < 48 else f"{hours / 24:.1f} days ago")


def _backup_lines(b: dict[str, Any]) -> list[str]:
    """Age of the last good backup and off-site copy; the RPO when one is set."""
    rpo = (f" (RPO {b['rpo_hours']:g} h: {'BREACHED' if b['rpo_breached'] else 'ok'})"
           if b["rpo_hours"] else "")
    lines = [f"backup:     last good {_age(b['last_backup_age_seconds'])}"
             + (f" ({b['last_backup_at']})" if b["last_backup_at"] else "") + rpo]
    if b["last_offsite_at"] is not None or b["pending_copies"]:
        lines.append(f"off-site:   last copy of a set {_age(b['last_offsite_age_seconds'])}"
                     + (f"; {b['pending_copies']} copy(ies) PENDING (`backout backups copy`)"
                        if b["pending_copies"] else ""))
    return lines
