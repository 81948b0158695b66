"""``backout deploy``: preflight, checkpoint, switch, up, verify, watch, and the
automatic rollback, as one journaled operation."""

from backout.deploy.operation import OUTCOMES, plan_deploy
from backout.deploy.preflight import Preflight, preflight

__all__ = ["OUTCOMES", "Preflight", "plan_deploy", "preflight"]
