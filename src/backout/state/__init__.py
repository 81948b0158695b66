"""backout's own state: an embedded SQLite store and the operation lock."""

from backout.state.lock import LockHolder, OperationLock
from backout.state.store import Store

__all__ = ["LockHolder", "OperationLock", "Store"]
