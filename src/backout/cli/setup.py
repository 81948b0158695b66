"""``backout init``, ``backout config check``, ``backout doctor``."""

from __future__ import annotations

from pathlib import Path

import click

from backout.cli.common import Ctx, ExitCode, command, emit, group
from backout.errors import BackoutError
from backout.setup import doctor
from backout.setup.init import init_project
from backout.setup.scripts import write_scripts
from backout.state.store import DB_NAME


@command("init")
@click.option("--force", is_flag=True, help="Overwrite an existing backout.toml (and scripts).")
@click.option("--scripts", is_flag=True,
              help="Also write deploy/rollback/*.sh and deploy/scripts/*.sh wrappers so the "
                   "runbook's commands keep working.")
def init_cmd(ctx: Ctx, force: bool, scripts: bool) -> ExitCode:
    """Inspect the Compose project and write a commented backout.toml.

    Services get a kind (app / database / proxy) and a health URL where one can
    be derived; databases are recognised by image whatever the registry and tag
    (else by the server program inside, said to be a guess) and their credentials
    referenced by NAME: a variable of the .env file, or the container's own
    variable or Docker secret (read inside it at each use).
    """
    target = ctx.env.config_path or (ctx.env.project_dir / "backout.toml")
    if scripts and Path(target).exists() and not force:

        written = write_scripts(Path(ctx.env.project_dir), force=False)
        emit(ctx.env, "init", {"path": str(target), "scripts": written},
             [f"kept {target}; wrote {', '.join(written) or 'no scripts (they exist; --force)'}"])
        return ExitCode.OK
    result = init_project(ctx.env, Path(ctx.env.project_dir), Path(target), force=force)
    written_scripts: list[str] = []
    if scripts:

        written_scripts = write_scripts(Path(ctx.env.project_dir), force=force)
    human = [f"wrote {result.path}", f"  services:  {', '.join(result.services) or '-'}",
             f"  databases: {', '.join(f'{k} ({v})' for k, v in result.databases.items()) or '-'}",
             *[f"    {k}: {how if how.startswith('guessed') else 'recognised by ' + how}"
               for k, how in result.recognised.items()],
             *([f"  scripts:   {', '.join(written_scripts)}"] if written_scripts else []),
             f"  state:     {result.state_dir}/ (ignores itself in git: it holds a "
             "`.gitignore` of `*`)",
             *[f"warning: {w}" for w in result.warnings],
             "next: review it, then run `backout config check`"]
    emit(ctx.env, "init", {"path": str(result.path), "services": result.services,
                           "databases": result.databases, "recognised": result.recognised,
                           "unsupported": result.unsupported, "warnings": result.warnings,
                           "scripts": written_scripts, "state_dir": str(result.state_dir)},
         human)
    return ExitCode.WARNINGS if result.warnings else ExitCode.OK


@group("config")
def config_group() -> None:
    """Validate and show backout.toml."""


@command("check", config_group)
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


@command("doctor")
def doctor_cmd(ctx: Ctx) -> int:
    """Check what the next rollback will need, before it is needed: engine and Compose
    versions, backout.toml, git, zstd, disk room for a checkpoint, every database
    reachable with the configured credentials, the images of the current and previous
    release, the lock, no interrupted operation. Each problem with its fix.

    Read-only. Exit 0 when every check passes, 1 otherwise.
    """
    try:
        config, problem = ctx.config, None
    except BackoutError as exc:  # reported as the config check; the rest still runs
        config, problem = None, exc
    store = ctx.store if config is not None and (config.state_dir / DB_NAME).is_file() else None
    report = doctor.run_doctor(ctx.env, config, problem, store,
                               doctor.real_sources(ctx.env, config))
    human: list[str] = []
    for check in report.checks:
        human.append(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        if check.fix:
            human.append(f"       fix: {check.fix}")
    human.append("doctor: ready for the next rollback" if report.ok else
                 f"doctor: {len(report.failed)} problem(s): "
                 f"{', '.join(c.name for c in report.failed)}")
    emit(ctx.env, "doctor", report.to_json(), human)
    return ExitCode.OK if report.ok else ExitCode.WARNINGS
