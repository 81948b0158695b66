"""backout's own state: an embedded SQLite store and the operation lock."""

from backout.state.lock import LockHolder, OperationLock
from backout.state.store import Checkpoint, OperationRow, OperationSummary, StepRow, Store

__all__ = ["Checkpoint", "LockHolder", "OperationLock", "OperationRow", "OperationSummary",
           "StepRow", "Store"]
