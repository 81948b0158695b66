"""PostgreSQL (issue 13, part A) on the real test stack: Debian's PostgreSQL 15 in the
``postgres`` service, reached inside its container (exec mode) as ``backout init``
configures it.

* init recognises it (user and password by variable name, the database from
  POSTGRES_DB) and writes no secret;
* a checkpoint's manifest holds the rows of every table, counted in the archives;
  ``backups verify --restore-test`` restores them into a throwaway container;
* ``rollback db postgresql`` puts back exactly the data of the checkpoint after
  damage (rows changed, a table dropped, a table added, the database dropped), and
  from an operator's own ``pg_dump -Fc`` file;
* doctor and verify ask the server its version (pg_isready when it does not answer).

The dropped-database round trip and the operator's own dump file (three and one
more rollbacks, about 3 minutes) run with ``-m soak``; the default suite keeps the
checkpoint, restore test, one rollback and the probes.

The live-writer proof (acknowledged writes, the data-loss window) is the postgresql
case of tests/integration/test_integrity.py.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import backout, ok, ok_json
from tests.support.integrity import safety_sets_of
from tests.support.snapshots import pg_snapshot
from tests.support.stack import DATABASE, TestStack

pytestmark = pytest.mark.docker

DB = "postgresql"  # the [databases.*] entry init writes for the postgres service


@pytest.fixture(scope="module")
def project(stack: TestStack) -> Path:
    path: Path = stack.project_dir
    (path / "backout.toml").unlink(missing_ok=True)
    ok(backout("init", cwd=path))
    return path


def checkpoint(project: Path) -> dict[str, Any]:
    return ok_json(backout("checkpoint", "--json", cwd=project))


def rollback(project: Path, ref: str) -> dict[str, Any]:
    return ok_json(backout("rollback", "db", DB, ref, "--yes", "--json", cwd=project))


def test_init_recognises_postgres_by_variable_names(project: Path, stack: TestStack) -> None:
    text = (project / "backout.toml").read_text()
    entry = tomllib.loads(text)["databases"][DB]
    assert entry == {"type": "postgresql", "service": "postgres", "mode": "exec",
                     "user_env": "POSTGRES_USER", "password_env": "POSTGRES_PASSWORD",
                     "databases": [DATABASE]}
    assert not any(secret in text for secret in stack.secrets.values())
    ok(backout("config", "check", cwd=project))


def test_checkpoint_counts_rows_and_the_restore_test_gets_them_back(
        project: Path, stack: TestStack) -> None:
    cp = checkpoint(project)
    manifest = json.loads((project / ".backout" / "backups" / cp["set_id"] / "manifest.json")
                          .read_text())
    section = manifest["databases"][DB]
    tables = section["databases"][DATABASE]["tables"]
    assert tables["public.customers"] == 20 and tables["ledger.entries"] == 20
    assert section["globals"] is True and section["roles"] >= 1
    assert section["position"]["lsn"]
    text = json.dumps(manifest)
    assert not any(secret in text for secret in stack.secrets.values())
    data = ok_json(backout("backups", "verify", cp["set_id"], "--restore-test", "--json",
                           cwd=project))
    assert data["verify"]["ok"] is True
    trial = data["restore_test"][DB]
    assert trial["ok"] is True, trial
    assert trial["restored"] == trial["expected"]
    assert trial["restored"][DATABASE]["ledger.entries"] == 20
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=io.backout.restore-test"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == []


def test_rollback_db_puts_back_exactly_the_checkpoint(project: Path, stack: TestStack) -> None:
    before = pg_snapshot(stack)
    cp = checkpoint(project)
    stack.pg_query("UPDATE customers SET name = 'changed' WHERE id <= 5;\n"
                   "DROP TABLE ledger.entries;\n"
                   "CREATE TABLE after_checkpoint (x int); INSERT INTO after_checkpoint VALUES (1);\n"
                   "CREATE ROLE made_after LOGIN;\n")
    assert pg_snapshot(stack) != before
    dry = ok_json(backout("rollback", "db", DB, cp["set_id"], "--dry-run", "--json", cwd=project))
    [window] = dry["data_loss"]
    assert window["row_deltas"]["backout_app.ledger.entries"] == -20, window
    assert window["row_deltas"]["backout_app.public.after_checkpoint"] == 1, window
    assert window["wal"]["bytes"] > 0, window
    result = rollback(project, cp["set_id"])
    after = pg_snapshot(stack)
    # a role made after the checkpoint is kept (roles are server-wide: other
    # databases may use it); everything in the database is as it was
    assert [r for r in after.pop("roles") if r[0] != "made_after"] == before.pop("roles")
    assert after == before
    stack.pg_query("DROP ROLE made_after")
    assert result["ok"] is True


@pytest.mark.soak
def test_a_dropped_database_comes_back_and_its_rollback_drops_it_again(
        project: Path, stack: TestStack) -> None:
    before = pg_snapshot(stack)
    cp = checkpoint(project)
    stack.pg_query(f"DROP DATABASE {DATABASE} WITH (FORCE)", database="postgres")
    first = rollback(project, cp["set_id"])
    assert pg_snapshot(stack) == before
    rollback(project, safety_sets_of(first["plan"])[DB])
    names = [r[0] for r in stack.pg_query("SELECT datname FROM pg_database", database="postgres")]
    assert DATABASE not in names
    rollback(project, cp["set_id"])
    assert pg_snapshot(stack) == before


@pytest.mark.soak
def test_rollback_from_an_operators_own_pg_dump_file(project: Path, stack: TestStack,
                                                     tmp_path: Path) -> None:
    before = pg_snapshot(stack)
    dump = tmp_path / "by-hand.dump"
    with dump.open("wb") as fh:
        subprocess.run(["docker", "compose", "exec", "-T", "-e", "PGPASSWORD", "postgres",
                        "pg_dump", "-Fc", "-U", stack.env["POSTGRES_USER"], "-d", DATABASE],
                       cwd=stack.project_dir, env=stack.compose_env() | {
                           "PGPASSWORD": stack.secrets["POSTGRES_PASSWORD"]},
                       stdout=fh, check=True, timeout=120)
    stack.pg_query("DELETE FROM ledger.entries WHERE id > 10")
    result = rollback(project, str(dump))
    assert result["ok"] is True
    assert pg_snapshot(stack) == before


def test_doctor_and_verify_ask_the_server(project: Path, stack: TestStack) -> None:
    doctor = json.loads(backout("doctor", "--json", cwd=project).stdout)
    check = next(c for c in doctor["checks"] if c["name"] == f"database {DB}")
    assert check["ok"] and "15." in check["detail"], check
    # the other checks (logs, health of the apps) are verify's own tests' business
    verified = json.loads(backout("verify", "--json", cwd=project).stdout)
    check = next(c for c in verified["checks"] if c["name"] == f"database {DB}")
    assert check["ok"] and "version 15." in check["detail"], check
