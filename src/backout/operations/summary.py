"""What an operation left behind, in words, from its journal alone.

Used by the message a command ends with (interrupted, failed, left unfinished) and
by ``backout status``, so both always say the same: the state of each database the
plan restores, of the writers it stopped, and the command to run next.
"""

from __future__ import annotations

import shlex
from typing import Any

from backout.operations.plan import Plan, Step
from backout.state import OperationRow, StepRow, Store

RESTORE = "rollback.db.restore"
UNDO = "rollback.db.undo"


def _action(step: Step) -> tuple[str, dict[str, Any]]:
    """The action a planned step runs (a deploy wraps the rollback actions)."""
    if step.action == "deploy.rollback_step":
        return step.params["action"], step.params["params"]
    return step.action, step.params


def describe(store: Store, op_id: int) -> dict[str, Any]:
    """``{"id", "kind", "status", "stopped_at", "data": [...], "services": [...],
    "next": "backout ..."}`` of one operation."""
    op = store.operation(op_id)
    if op is None:
        return {"id": op_id, "data": [], "services": [], "next": None}
    steps = Plan.from_json(op["plan"]).steps  # journals older than step keys get theirs
    journal = {row["seq"]: row for row in store.operation_steps(op_id)}
    stopped_at = next((journal[i]["name"] for i in sorted(journal)
                       if journal[i]["status"] in ("failed", "running")), None)
    data: list[str] = []
    undo_by_db = {_action(s)[1].get("database"): journal.get(i) for i, s in enumerate(steps)
                  if _action(s)[0] == UNDO}
    for i, step in enumerate(steps):
        action, params = _action(step)
        if action == RESTORE:
            data.append(_database_state(params["database"], journal.get(i),
                                        undo_by_db.get(params["database"]), params))
    services = []
    for i, step in enumerate(steps):
        action, params = _action(step)
        if action != "compose.stop" or not (row := journal.get(i)):
            continue
        stopped = (_result(row) or {}).get("stopped") if row["status"] == "done" else None
        if row["status"] in ("pending", "skipped") or stopped == []:
            continue
        start = next((journal.get(j) for j, s in enumerate(steps)
                      if _action(s)[0] == "compose.start"
                      and _action(s)[1].get("stop_step") == step.key), None)
        names = ", ".join(stopped or params["services"])
        if start is not None and start["status"] == "done" \
                and "skipped" not in (_result(start) or {}):
            services.append(f"{names}: running again")
        else:
            services.append(f"{names}: STOPPED (started again by `backout resume`)"
                            if op["status"] == "running" else f"{names}: STOPPED")
    return {"id": op_id, "kind": op["kind"], "status": op["status"], "stopped_at": stopped_at,
            "data": data, "services": services, "next": _next(op)}


def _result(row: StepRow) -> dict[str, Any] | None:
    detail = row["detail"]
    return detail if isinstance(detail, dict) else None


def _database_state(name: str, row: StepRow | None, undo: StepRow | None,
                    params: dict[str, Any]) -> str:
    result = _result(row) if row else None
    undone = undo is not None and undo["status"] == "done" and (_result(undo) or {}).get("undone")
    source = params.get("source") or params.get("set_id") or "the backup"
    if undone:
        return f"{name}: as before the restore (its safety backup was put back)"
    if row is not None and row["status"] == "done" and not (result or {}).get("skipped"):
        return f"{name}: restored from {source}"
    if row is None or row["status"] in ("pending", "skipped") or (result or {}).get("skipped"):
        return f"{name}: unchanged (not restored)"
    # running (a crash or a second signal inside the restore) or failed, not undone yet
    if undo is None:  # restored without a safety backup (--no-safety-backup)
        return f"{name}: MAY BE HALF-RESTORED and there is no safety backup: restore it again"
    return (f"{name}: MAY BE HALF-RESTORED: its safety backup has not been put back yet "
            "(`backout resume` does it)")


def _next(op: OperationRow) -> str | None:
    if op["status"] == "running":
        return "backout resume"
    if op["status"] == "succeeded":
        return None
    params = op["params"]
    kind = op["kind"]
    if kind == "rollback.db":
        again = ["rollback", "db", params["database"], params["backup"]]
    elif kind == "rollback.emergency":
        again = ["rollback", "emergency", params["target"],
                 *(["--with-data"] if params.get("with_data") else [])]
    elif kind == "deploy":
        again = ["deploy", params["ref"]]
    elif kind in ("checkpoint", "backup"):
        again = ["checkpoint"] if kind == "checkpoint" else ["backup", _which(params)]
    else:
        return None
    return f"backout {shlex.join(again)}"


def _which(params: dict[str, Any]) -> str:
    names = [*(params.get("databases") or []), *(params.get("volumes") or [])]
    return names[0] if len(names) == 1 else "all"


def lines(summary: dict[str, Any]) -> list[str]:
    """The summary as lines for a terminal."""
    out = [f"  data: {line}" for line in summary["data"]]
    out += [f"  writers: {line}" for line in summary["services"]]
    if summary.get("next"):
        out.append(f"  next: {summary['next']}")
    return out


def one_line(summary: dict[str, Any]) -> str:
    parts = [*summary["data"], *(f"writers {s}" for s in summary["services"])]
    return "; ".join(parts)
