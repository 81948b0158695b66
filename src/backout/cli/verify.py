"""``backout verify``."""

from __future__ import annotations

import click

from backout.cli.common import Ctx, ExitCode, command, emit
from backout.verify import run_verify


@command("verify")
@click.option("--settle", type=click.IntRange(min=0), default=None,
              help="Seconds to watch for restarts (default: [verify] settle_seconds).")
def verify_cmd(ctx: Ctx, settle: int | None) -> int:
    """Post-rollback checks: containers, health URLs, logs, databases, images."""
    result = run_verify(ctx.env, ctx.config, ctx.store, ctx.platform, settle=settle)
    human = [f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in result.checks]
    human.append("verify: passed" if result.ok else
                 f"verify: FAILED ({', '.join(c.name for c in result.failed)})")
    emit(ctx.env, "verify", result.to_json(), human)
    return ExitCode.OK if result.ok else ExitCode.VERIFICATION_FAILED
