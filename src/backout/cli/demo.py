"""``backout demo``: a guarded deploy, narrated, on a small demo stack."""

from __future__ import annotations

from pathlib import Path

import click

from backout import demo
from backout.adapters.docker import Docker
from backout.cli.common import Ctx, command


@command("demo")
@click.option("--keep", is_flag=True, help="Leave the demo stack running afterwards.")
@click.option("--watch", "watch_seconds", type=click.IntRange(min=10), default=90,
              show_default=True, help="Longest watch of the broken release.")
@click.option("--dir", "workdir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the demo's project directory is created (default: a temp dir).")
def demo_cmd(ctx: Ctx, keep: bool, watch_seconds: int, workdir: Path | None) -> int:
    """Show a guarded deploy end to end on a small demo stack: deploy a healthy
    release, then a broken one that backout detects and rolls back by itself.

    Needs only Docker with Compose v2 (the images build FROM debian:bookworm-slim);
    about 2 minutes once the images exist. Everything is removed afterwards.
    """
    Docker(ctx.env).ping()
    return demo.run_demo(ctx.env.stdout, keep=keep, workdir=workdir, watch_seconds=watch_seconds,
                    color=ctx.env.color(ctx.env.stdout))
