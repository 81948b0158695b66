"""A plan is data: steps naming a registered action, its JSON parameters and the
reason an operator reads in ``--dry-run``. Being data, it is stored in the journal
as it was shown, and a resumed operation runs exactly the plan that was approved.

Steps are joined by their ``key`` (``dump:mysql``, ``stop-writers``), never by
their prose ``name``: results are handed on under it and parameters that point at
another step (``stop_step``, ``verify_step``, ``requires``) hold it, so rewording a
step cannot break ``backout resume`` of a plan journaled before the rewording.
Plans journaled before keys existed are read through ``legacy_key`` (below).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str  # for the operator, e.g. "dump mysql"
    action: str  # key in the action registry
    reason: str  # why, for the operator: what stops, what is overwritten
    params: dict[str, Any] = field(default_factory=dict)
    # "always" steps run even when an earlier step failed (restart the writers
    # after a quiesced backup, put the safety backup back after a failed restore).
    always: bool = False
    # "on_failure" steps run only when an earlier step of the operation failed (in
    # this run or before an interruption): a guarded deploy's rollback.
    on_failure: bool = False
    # Stable and unique within the plan, e.g. "dump:mysql": what results are keyed by
    # and what steps point at each other with. Defaults to the name (tests, and
    # journals from before keys; see Plan.from_json).
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    kind: str  # checkpoint, rollback.service, rollback.db, ...
    params: dict[str, Any]
    steps: tuple[Step, ...]
    summary: str = ""
    downtime: str = ""  # what downtime to expect, in words

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.params, "summary": self.summary,
                "downtime": self.downtime, "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        steps = data["steps"]
        if any("key" not in s for s in steps):
            steps = _with_keys(steps)
        return cls(kind=data["kind"], params=data["params"], summary=data.get("summary", ""),
                   downtime=data.get("downtime", ""),
                   steps=tuple(Step(**s) for s in steps))

    def render(self) -> list[str]:
        lines = [f"plan: {self.summary or self.kind}"]
        if self.downtime:
            lines.append(f"  expected downtime: {self.downtime}")
        for i, step in enumerate(self.steps, 1):
            flag = (" (only if an earlier step fails)" if step.on_failure else
                    " (runs even if an earlier step fails)" if step.always else "")
            lines.append(f"  {i}. {step.name}{flag}")
            lines.append(f"     why: {step.reason}")
        return lines


# -- plans journaled before steps had keys -----------------------------------------
#
# Such a step is given the key today's planner gives the same step, so the actions
# find its result under the key they look for; a step no action looks up keeps its
# name as key. Parameters that named another step now hold that step's key.
# tests/unit/test_step_keys.py proves this agrees with every planner.

_KEY_OF_ACTION = {
    "backup.cleanup": "cleanup", "backup.publish": "publish", "backup.discard": "discard",
    "backup.record_checkpoint": "record-checkpoint",
    "rollback.record_expected": "record-expected",
    "emergency.save_changes": "save-changes", "emergency.checkout": "checkout",
    "emergency.images": "images", "emergency.up": "up", "emergency.verify": "verify-stack",
    "deploy.previous": "deploy:previous", "deploy.build": "deploy:build",
    "deploy.up": "deploy:up", "deploy.record": "record-release",
    "deploy.verify": "deploy:verify", "deploy.watch": "deploy:watch",
    "deploy.decide": "deploy:decide", "deploy.outcome": "deploy:outcome",
}
# action -> (key prefix, the parameter naming what it acts on)
_KEY_OF_TARGET = {
    "backup.dump": ("dump", "database"), "backup.volume": ("volume", "volume"),
    "rollback.db.verify": ("verify", "database"), "rollback.db.safety": ("safety", "database"),
    "rollback.db.restore": ("restore", "database"), "rollback.db.undo": ("undo", "database"),
    "rollback.service.recreate": ("recreate", "service"),
    "rollback.service.verify": ("verify-service", "service"),
}
# the code part of a deploy's rollback (data steps keep their own keys)
_KEY_OF_ROLLBACK = {"emergency.checkout": "rollback:checkout",
                    "emergency.images": "rollback:images", "emergency.up": "rollback:up",
                    "emergency.verify": "rollback:verify"}
_REFERENCES = ("stop_step", "verify_step")  # parameters naming another step


def legacy_key(name: str, action: str, params: dict[str, Any]) -> str:
    """The key of a step journaled without one."""
    if action == "deploy.rollback_step":
        inner = params.get("action", "")
        return _KEY_OF_ROLLBACK.get(inner) or legacy_key(name, inner, params.get("params", {}))
    if action in _KEY_OF_ACTION:
        return _KEY_OF_ACTION[action]
    if action in _KEY_OF_TARGET:
        prefix, param = _KEY_OF_TARGET[action]
        return f"{prefix}:{params[param]}"
    services = ", ".join(params.get("services") or [])
    if (action, name) in (("compose.stop", f"stop writers: {services}"),
                          ("compose.start", f"start writers: {services}")):
        return f"{action.removeprefix('compose.')}-writers"
    return name


def _with_keys(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = {s["name"]: legacy_key(s["name"], s["action"], s.get("params") or {})
            for s in steps}
    return [{**s, "key": s.get("key") or keys[s["name"]],
             "params": _point_at_keys(s.get("params") or {}, keys)} for s in steps]


def _point_at_keys(params: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    out = dict(params)
    for ref in _REFERENCES:
        if isinstance(out.get(ref), str):
            out[ref] = keys.get(out[ref], out[ref])
    if isinstance(out.get("requires"), list):
        out["requires"] = [keys.get(r, r) for r in out["requires"]]
    if isinstance(out.get("params"), dict):  # a deploy's wrapped rollback step
        out["params"] = _point_at_keys(out["params"], keys)
    return out
