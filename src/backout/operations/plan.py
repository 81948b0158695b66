"""A plan is data: steps naming a registered action, its JSON parameters and the
reason an operator reads in ``--dry-run``. Being data, it is stored in the journal
as it was shown, and a resumed operation runs exactly the plan that was approved."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str  # unique within the plan, e.g. "dump mysql"
    action: str  # key in the action registry
    reason: str  # why, for the operator: what stops, what is overwritten
    params: dict[str, Any] = field(default_factory=dict)
    # "always" steps run even when an earlier step failed (restart the writers
    # after a quiesced backup, put the safety backup back after a failed restore).
    always: bool = False
    # "on_failure" steps run only when an earlier step of the operation failed (in
    # this run or before an interruption): a guarded deploy's rollback.
    on_failure: bool = False

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
        return cls(kind=data["kind"], params=data["params"], summary=data.get("summary", ""),
                   downtime=data.get("downtime", ""),
                   steps=tuple(Step(**s) for s in data["steps"]))

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
