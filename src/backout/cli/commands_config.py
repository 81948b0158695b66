"""``backout init`` and ``backout config ...``."""

from __future__ import annotations

from pathlib import Path

import click

from backout.cli.main import Ctx, cli, command
from backout.cli.output import emit
from backout.config.init import init_project
from backout.errors import ExitCode


@command(cli, "init")
@click.option("--force", is_flag=True, help="Overwrite an existing backout.toml.")
def init_cmd(ctx: Ctx, force: bool) -> ExitCode:
    """Inspect the Compose project and write a commented backout.toml.

    Services get a kind (app / database / proxy) and a health URL where one can
    be derived; databases are recognised by image (mysql/mariadb, mongo, redis)
    and their credentials referenced by variable NAME from the .env file.
    """
    target = ctx.env.config_path or (ctx.env.project_dir / "backout.toml")
    result = init_project(ctx.env, Path(ctx.env.project_dir), Path(target), force=force)
    human = [f"wrote {result.path}", f"  services:  {', '.join(result.services) or '-'}",
             f"  databases: {', '.join(f'{k} ({v})' for k, v in result.databases.items()) or '-'}",
             *[f"warning: {w}" for w in result.warnings],
             "next: review it, then run `backout config check`"]
    emit(ctx.env, "init", {"path": str(result.path), "services": result.services,
                           "databases": result.databases, "warnings": result.warnings}, human)
    return ExitCode.WARNINGS if result.warnings else ExitCode.OK


@cli.group("config")
def config_group() -> None:
    """Validate and show backout.toml."""


@command(config_group, "check")
def config_check(ctx: Ctx) -> None:
    """Validate backout.toml against the Compose project; exit 2 on the first problem."""
    config = ctx.config
    human = [f"{config.path}: ok",
             f"  compose files: {', '.join(config.project.compose_files)}",
             f"  services:      {', '.join(config.services) or '-'}",
             f"  databases:     {', '.join(config.databases) or '-'}"]
    emit(ctx.env, "config check", {
        "path": str(config.path),
        "valid": True,
        "compose_files": list(config.project.compose_files),
        "services": sorted(config.services),
        "databases": sorted(config.databases),
    }, human)
