"""Plan, then execute: read-only plans of steps with reasons, run by a journaling
executor so that ``backout resume`` can finish what a crash interrupted."""

from backout.operations.executor import Executor, OperationOutcome, register_action
from backout.operations.plan import Plan, Step

__all__ = ["Executor", "OperationOutcome", "Plan", "Step", "register_action"]
