"""``backout status``: what the project is in now, read without a running monitor:
the current release and checkpoint, the lock holders, interrupted operations, the
last operation's state, the monitor's level, open incidents, the baseline and drift.

Works with the Docker Engine down: what needs it is left out, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backout.backup.freshness import freshness
from backout.config import Config
from backout.errors import BackoutError
from backout.monitor.run import baseline_in_use
from backout.operations import summary
from backout.platforms.base import Platform
from backout.rollback.service import drift
from backout.state import Checkpoint, LockHolder, OperationLock, OperationRow, Store
from backout.state.lock import MONITOR_LOCK_NAME


@dataclass(frozen=True)
class Status:
    release: dict[str, Any] | None
    checkpoint: Checkpoint | None
    lock: LockHolder | None  # who holds the operation lock
    interrupted: list[OperationRow]  # unfinished operations (read when the lock is free)
    monitor: LockHolder | None  # the monitor running, if any
    level: dict[str, Any] | None  # the monitor's last evaluation
    open_incidents: list[dict[str, Any]]
    last_operation: OperationRow | None
    last_state: dict[str, Any] | None  # summary.describe of the last operation
    drift: dict[str, Any] | None  # None: the engine did not answer
    baseline: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)
    # the newest good backup and off-site copy, their ages, the RPO (backup.freshness)
    backups: dict[str, Any] | None = None


def read_status(config: Config, store: Store, platform: Platform) -> Status:
    holder = OperationLock(config.state_dir).holder()
    latest = store.releases(1)
    pending = store.unfinished_operations() if holder is None else []
    monitor = OperationLock(config.state_dir, MONITOR_LOCK_NAME).holder()
    warnings: list[str] = []
    try:
        drifted: dict[str, Any] | None = drift(platform)
        baseline = baseline_in_use(store, platform)
    except BackoutError as exc:  # status must work with the engine down
        drifted = baseline = None
        warnings.append(f"cannot compare running images: {exc.one_line()}")
    last = store.last_operation()
    return Status(
        release=latest[0] if latest else None, checkpoint=store.latest_checkpoint(),
        lock=holder, interrupted=pending, monitor=monitor, level=store.fact("monitor.level"),
        open_incidents=store.open_incidents(), last_operation=last,
        # The same words the operation's own exit message used (operations.summary).
        last_state=summary.describe(store, last["id"]) if last is not None else None,
        drift=drifted, baseline=baseline, warnings=warnings,
        backups=freshness(config, store).to_json())
