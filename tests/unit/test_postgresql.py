"""The PostgreSQL engine without a server: its archive reader on real pg_dump output
(tests/data/postgresql), the bundle, and the dump / restore / probe paths through
FakePlatform with stand-in client tools on PATH (a shell script per tool that logs
its argv and environment and answers as told), so argv, secrets, failures and the
order of the restore's calls are checked in-process. The real thing:
tests/integration/test_postgresql.py."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backout import engines
from backout.config.model import BackupsConfig, Config, DatabaseConfig
from backout.engines.access import EngineAccess
from backout.engines.base import EngineContext
from backout.engines.pgarchive import (
    BUNDLE_MAGIC,
    END,
    END_PART,
    BundleChecker,
    CustomArchiveChecker,
    _Reader,
    chunk,
    parse_head,
    part_header,
)
from backout.engines.postgresql import ENGINE, _globals_sql, _Producer, restore_postgresql
from backout.environment import Environment
from backout.errors import ExternalError, NotFoundError
from backout.storage.pipeline import CHUNK, IntegrityError, StalledError, scan
from tests.support.descriptors import high_descriptors
from tests.support.fakes import FakePlatform

DATA = Path(__file__).resolve().parent.parent / "data" / "postgresql"
Z0 = (DATA / "app-z0.dump").read_bytes()
GZIP = (DATA / "app-gzip.dump").read_bytes()
GLOBALS = (DATA / "globals.sql").read_bytes()
TABLES = {"other.We ird": 2, "public.empty_t": 0, "public.items": 1000}
PASSWORD = "pw-not-in-argv-7f3a"


def read(data: bytes, step: int, checker: Any = None) -> dict[str, Any]:
    checker = checker or CustomArchiveChecker("t")
    for i in range(0, len(data), step):
        checker.feed(data[i:i + step])
    result: dict[str, Any] = checker.finish()
    return result


def bundle(*parts: tuple[str, str, bytes], end: bool = True) -> bytes:
    out = BUNDLE_MAGIC
    for kind, name, data in parts:
        out += part_header(kind, name) + chunk(data[:1000]) + (chunk(data[1000:]) if data[1000:] else b"") + END_PART
    return out + (END if end else b"")


# --------------------------------------------------------------------------- the archive


@pytest.mark.parametrize("step", [1 << 20, 4096, 7])
def test_rows_of_every_table_are_counted_whatever_the_chunking(step: int) -> None:
    result = read(Z0, step)
    assert result["tables"] == TABLES
    assert result["large_objects"] == 1
    assert result["database"] == "backout_app"
    assert result["archive_version"] == "1.14.0"


def rechunked(data: bytes, sizes: list[int]) -> bytes:
    """``data`` (an uncompressed archive) with the data of every table cut again into
    chunks of ``sizes`` (in turn), as another pg_dump could have written them; the
    large objects' block is copied as it is."""
    reader = _Reader(data)
    parse_head(reader)
    pos, out = reader.pos, bytearray(data[:reader.pos])
    width = 1 + reader.int_size

    def length(at: int) -> int:
        assert data[at] == 0
        return int.from_bytes(data[at + 1:at + width], "little")

    while pos < len(data):
        start, kind = pos, data[pos]
        pos += 1 + width  # the block type and its dump id
        if kind == 3:  # large objects: (oid, chunks, 0)... then 0
            while length(pos) != 0:
                pos += width
                while (n := length(pos)) != 0:
                    pos += width + n
                pos += width
            pos += width
            out += data[start:pos]
            continue
        out += data[start:pos]
        body = bytearray()
        while (n := length(pos)) != 0:
            body += data[pos + width:pos + width + n]
            pos += width + n
        pos += width
        i = 0
        while body:
            size = min(sizes[i % len(sizes)], len(body))
            out += b"\x00" + size.to_bytes(width - 1, "little") + body[:size]
            del body[:size]
            i += 1
        out += bytes(width)
    return bytes(out)


@pytest.mark.parametrize("sizes", [[10], [266, 1, 2570], [3, 10, 700]],
                         ids=["newline-lengths", "newline-in-a-higher-byte", "short-chunks"])
def test_rows_are_counted_whatever_the_archives_own_chunks(sizes: list[int]) -> None:
    # a chunk length of 10 (or 266 = 0x10A, 2570 = 0xA0A) puts newline bytes in the
    # chunk headers: they are not rows
    data = rechunked(Z0, sizes)
    assert data != Z0
    for step in (1 << 20, 4099, 7):
        result = read(data, step)
        assert (result["tables"], result["large_objects"]) == (TABLES, 1)


def test_an_archive_compressed_by_pg_dump_itself_is_counted_through_zlib() -> None:
    assert read(GZIP, 3000)["tables"] == TABLES


@pytest.mark.parametrize("data", [Z0, GZIP], ids=["z0", "gzip"])
def test_an_archive_cut_anywhere_fails(data: bytes) -> None:
    for cut in [0, 4, 5, 60, *range(200, len(data) - 1, max(1, len(data) // 150)), len(data) - 1]:
        with pytest.raises(IntegrityError):
            read(data[:cut], 4096)


def test_a_corrupt_block_header_fails() -> None:
    reader = _Reader(Z0)
    parse_head(reader)
    head_end = reader.pos  # the first data block: its type byte
    assert Z0[head_end] == 1
    with pytest.raises(IntegrityError):
        read(Z0[:head_end] + b"\x07" + Z0[head_end + 1:], 4096)


def test_not_an_archive() -> None:
    with pytest.raises(IntegrityError, match="PGDMP"):
        read(b"-- PostgreSQL database dump\n" * 10, 4096)


def test_a_table_whose_copy_data_lost_its_end_fails() -> None:
    marker = Z0.index(b"\\.\n\n\n")
    # same length, so the block framing stays valid: only the content is wrong
    broken = Z0[:marker] + b"xx\n\n\n" + Z0[marker + 5:]
    with pytest.raises(IntegrityError, match="does not end as pg_dump ends a table"):
        read(broken, 4096)


# --------------------------------------------------------------------------- the bundle


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_a_tools_output_goes_into_the_bundle_whole_a_chunk_at_a_time(size: int) -> None:
    """The pump reads the tool's pipe into one buffer and frames it a CHUNK at a time
    (the last frame whatever is left at the end): the frames give back every byte."""
    script = (f"import random, sys; d = random.Random({size}).randbytes({size})\n"
              "w = sys.stdout.buffer\n"
              "for i in range(0, len(d), 7000):\n    w.write(d[i:i + 7000]); w.flush()")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    producer = _Producer.__new__(_Producer)
    producer.what, producer.stall = "roles", None
    bundle = io.BytesIO()
    producer._pump(child, bundle)
    assert child.wait() == 0
    out, frames, pos = bundle.getvalue(), [], 0
    while pos < len(out):
        (length,) = struct.unpack(">Q", out[pos:pos + 8])
        frames.append(out[pos + 8:pos + 8 + length])
        pos += 8 + length
    assert b"".join(frames) == random.Random(size).randbytes(size)
    assert all(len(f) == CHUNK for f in frames[:-1]) and all(frames)
    assert len(frames) == -(-size // CHUNK)


def test_a_tools_pipe_numbered_past_1023_is_pumped() -> None:
    """select() refuses a descriptor past FD_SETSIZE; a long-running process (a
    schedule) can have one for the tool's pipe."""
    with high_descriptors():
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('x' * 5000)"],
                                 stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.fileno() >= 1024
        producer = _Producer.__new__(_Producer)
        producer.what, producer.stall = "roles", None
        bundle = io.BytesIO()
        producer._pump(child, bundle)
    assert child.wait() == 0
    assert bundle.getvalue() == struct.pack(">Q", 5000) + b"x" * 5000


def test_a_bundle_is_read_part_by_part() -> None:
    data = bundle(("globals", "", GLOBALS), ("database", "backout_app", Z0),
                  ("database", "odd name/ü", Z0))
    result = read(data, 5000, BundleChecker(["backout_app"], "t"))
    assert result["databases"]["backout_app"]["tables"] == TABLES
    assert result["databases"]["odd name/ü"]["tables"] == TABLES
    assert result["globals"] is True and result["roles"] == 2


def test_a_bundle_without_its_end_marker_fails() -> None:
    with pytest.raises(IntegrityError, match="no end marker"):
        read(bundle(("globals", "", GLOBALS), ("database", "a", Z0), end=False), 4096,
             BundleChecker([], "t"))


def test_a_bundle_missing_a_configured_database_fails() -> None:
    with pytest.raises(IntegrityError, match="missing from the backup: b"):
        read(bundle(("globals", "", GLOBALS), ("database", "a", Z0)), 4096,
             BundleChecker(["a", "b"], "t"))


def test_a_bundle_whose_roles_dump_stopped_early_fails() -> None:
    with pytest.raises(IntegrityError, match="completion trailer"):
        read(bundle(("globals", "", GLOBALS[:300]), ("database", "a", Z0)), 4096,
             BundleChecker([], "t"))


def test_a_bundle_holding_a_truncated_archive_fails() -> None:
    with pytest.raises(IntegrityError, match="truncated"):
        read(bundle(("globals", "", GLOBALS), ("database", "a", Z0[:-40])), 4096,
             BundleChecker([], "t"))


def test_sniffing_tells_a_bundle_and_a_plain_archive_from_sql() -> None:
    assert ENGINE.sniff(BUNDLE_MAGIC + b"PART", Path("x")) == 3
    assert ENGINE.sniff(Z0[:64], Path("x")) == 3
    assert ENGINE.sniff(b"-- MySQL dump 10.13", Path("x")) == 0


def test_the_engine_is_in_the_table_and_says_what_it_overwrites() -> None:
    assert engines.get("postgresql") is ENGINE
    assert "postgresql" in engines.names()
    db = DatabaseConfig("pg", "postgresql", "postgres")
    assert ENGINE.artifact_name(db) == "pg.pgbundle.zst"
    assert "dropped and recreated" in ENGINE.overwritten(db)


def test_the_roles_restore_leaves_the_connected_role_alone() -> None:
    sql = _globals_sql(GLOBALS.decode(), "postgres")
    assert "CREATE ROLE postgres;" not in sql and "ALTER ROLE postgres " not in sql
    assert "CREATE ROLE app_reader;" in sql and "ALTER ROLE app_reader " in sql


# --------------------------------------------------------------------------- the client tools


FAKE_TOOL = r"""#!/bin/sh
# stand-in for a PostgreSQL client tool: logs argv and PGPASSWORD, answers per $FAKE_DIR
tool=$(basename "$0")
printf '%s\n' "$(printf '%s\036' "$tool" "$@")PGPASSWORD=${PGPASSWORD:-}" >> "$FAKE_DIR/calls"
if [ -f "$FAKE_DIR/fail-$tool" ]; then cat "$FAKE_DIR/fail-$tool" >&2; exit 1; fi
if [ -f "$FAKE_DIR/hang-$tool" ]; then sleep 30; fi
case "$tool" in
  psql)
    for a in "$@"; do last="$a"; done
    case "$last" in
      "SHOW server_version") echo "15.18" ;;
      SELECT\ \'version\'*) printf 'version\03715.18\037\037\037\nlsn\0370/1A2B3C4\037\037\037\ndatabase\037postgres\037\037\037\ndatabase\037backout_app\037\037\037\nstats\037backout_app\0375\03710\037\nstats\037postgres\0379\0379\037\n' ;;
      SELECT\ datname\ FROM\ pg_database*) printf 'backout_app\npostgres\n' ;;
      SELECT\ CASE*) echo "0/1A2B3C4" ;;
      SELECT\ datname,*) printf 'backout_app\0375\03710\037\n' ;;
      SELECT\ n.nspname*) cat "$FAKE_DIR/counts" ;;
      -) cat > "$FAKE_DIR/globals-in" ;;
    esac ;;
  pg_dumpall) cat "$FAKE_DIR/globals.sql" ;;
  pg_dump) cat "$FAKE_DIR/archive" ;;
  sh) shift; shift; cat > "$FAKE_DIR/received" ;;
  *) : ;;
esac
"""


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    fake = tmp_path / "fake"
    bin_dir = fake / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "fake-exec").write_text('#!/bin/sh\nshift\nexec "$@"\n')
    for tool in ("psql", "pg_dump", "pg_dumpall", "pg_restore", "pg_isready", "rm", "sh"):
        (bin_dir / tool).write_text(FAKE_TOOL)
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    (fake / "globals.sql").write_bytes(GLOBALS)
    (fake / "archive").write_bytes(Z0)
    return fake


def setup(tmp: Path, fake: Path, **db_fields: Any) -> tuple[Environment, Config, EngineAccess]:
    env = Environment(project_dir=tmp)
    env.env = {"PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE_DIR": str(fake)}
    fields = {"databases": ("backout_app",), "user_env": "PG_USER", "password_env": "PG_PW",
              **db_fields}
    db = DatabaseConfig("pg", "postgresql", "postgres", **fields)
    config = Config(path=tmp / "backout.toml", project_dir=tmp, databases={"pg": db},
                    secrets={"PG_PW": PASSWORD, "PG_USER": "backout"})
    return env, config, EngineAccess(env, config, db, FakePlatform(tmp))


def calls(fake: Path) -> list[list[str]]:
    return [line.split("\x1e") for line in (fake / "calls").read_text().split("\n") if line]


def test_the_roles_are_dumped_beside_the_facts_and_still_come_first(
        tmp_path: Path, tools: Path) -> None:
    """pg_dumpall --globals-only runs while the facts' psql is asked (a `docker exec`
    each): the psql here answers only once pg_dumpall has started (or gives up after
    5 s and says so). The bundle still holds the roles first."""
    real = tools / "real"
    real.mkdir()
    for tool in ("psql", "pg_dumpall"):
        (tools / "bin" / tool).rename(real / tool)
    (tools / "bin" / "pg_dumpall").write_text(
        '#!/bin/sh\ntouch "$FAKE_DIR/dumpall-started"\nexec "$FAKE_DIR/real/pg_dumpall" "$@"\n')
    (tools / "bin" / "psql").write_text(
        '#!/bin/sh\nfor a in "$@"; do last="$a"; done\ncase "$last" in SELECT\\ \\\'version\\\'*)\n'
        '  i=0; while [ ! -e "$FAKE_DIR/dumpall-started" ] && [ $i -lt 50 ]; do '
        'sleep 0.1; i=$((i+1)); done\n'
        '  [ -e "$FAKE_DIR/dumpall-started" ] || touch "$FAKE_DIR/one-after-the-other";;\n'
        'esac\nexec "$FAKE_DIR/real/psql" "$@"\n')
    for f in (tools / "bin" / "pg_dumpall", tools / "bin" / "psql"):
        f.chmod(0o755)
    env, config, access = setup(tmp_path, tools)
    section = ENGINE.dump(EngineContext(env, config, access.platform), access.db, tmp_path)
    assert not (tools / "one-after-the-other").exists()
    assert section["database"]["databases"] == {"backout_app": {
        "tables": TABLES, "large_objects": 1, "toc_entries": 18, "archive_version": "1.14.0"}}
    bundle = subprocess.run(["zstd", "-dc", str(tmp_path / ENGINE.artifact_name(access.db))],
                            capture_output=True, check=True).stdout
    assert bundle.index(b"PART globals") < bundle.index(b"PART database")
    assert GLOBALS in bundle


def test_dump_runs_the_tools_with_the_password_in_the_environment_only(
        tmp_path: Path, tools: Path) -> None:
    env, config, access = setup(tmp_path, tools)
    section = ENGINE.dump(EngineContext(env, config, access.platform), access.db, tmp_path)
    made = calls(tools)
    dump = next(c for c in made if c[0] == "pg_dump")
    assert dump[1:-1] == ["-U", "backout", "--format=custom", "-Z0", "--no-password",
                          "-d", "backout_app"]
    assert next(c for c in made if c[0] == "pg_dumpall")[1:-1] == [
        "-U", "backout", "--globals-only", "--no-password", "-l", "postgres"]
    assert all(c[-1] == f"PGPASSWORD={PASSWORD}" for c in made)
    assert not any(PASSWORD in arg for c in made for arg in c[:-1])
    # what it asks first is one psql (an exec each costs 0.1 s of every backup), the
    # roles beside it (either may start first), then the database
    assert sorted(c[0] for c in made[:2]) == ["pg_dumpall", "psql"]
    assert [c[0] for c in made[2:]] == ["pg_dump"]
    db_section = section["database"]
    assert db_section["databases"]["backout_app"]["tables"] == TABLES
    assert db_section["position"] == {"lsn": "0/1A2B3C4", "stats": {
        "backout_app": {"transactions": 5, "row_writes": 10, "stats_reset": ""}}}
    assert PASSWORD not in json.dumps(section)
    # the artifact is what the checker reads again from disk
    again = scan(env, tmp_path / "pg.pgbundle.zst", ENGINE.checker(db_section, "again"),
                 what="again")
    assert again.checks["databases"] == db_section["databases"]


def test_a_dump_tool_that_fails_fails_the_dump_naming_the_database(
        tmp_path: Path, tools: Path) -> None:
    env, config, access = setup(tmp_path, tools)
    (tools / "fail-pg_dump").write_text('pg_dump: error: FATAL:  password authentication failed '
                                        'for user "backout"\n')
    with pytest.raises(ExternalError, match="pg: authentication failed"):
        ENGINE.dump(EngineContext(env, config, access.platform), access.db, tmp_path)


def test_an_archive_that_ends_early_is_caught_by_the_scan(tmp_path: Path, tools: Path) -> None:
    env, config, access = setup(tmp_path, tools)
    (tools / "archive").write_bytes(Z0[:-200])
    with pytest.raises(IntegrityError, match="truncated"):
        ENGINE.dump(EngineContext(env, config, access.platform), access.db, tmp_path)


def test_a_silent_dump_tool_is_reported_stalled(tmp_path: Path, tools: Path) -> None:
    env, config, access = setup(tmp_path, tools)
    config = dataclasses.replace(config, backups=BackupsConfig(stall_seconds=1))
    (tools / "hang-pg_dump").write_text("")
    with pytest.raises(StalledError, match="no data moved"):
        ENGINE.dump(EngineContext(env, config, access.platform), access.db, tmp_path)


def test_a_configured_database_that_does_not_exist_is_refused(tmp_path: Path, tools: Path) -> None:
    env, config, access = setup(tmp_path, tools, databases=("nope",))
    with pytest.raises(NotFoundError, match="nope do not exist"):
        ENGINE.dump(EngineContext(env, config, access.platform), access.db, tmp_path)
    assert not any(c[0] == "pg_dump" for c in calls(tools))


def app_artifact(tmp: Path) -> Path:
    """A zstd'd bundle of the roles and the app database, as a backup holds it."""
    data = bundle(("globals", "", GLOBALS), ("database", "backout_app", Z0))
    artifact = tmp / "a.zst"
    artifact.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                                        check=True).stdout)
    return artifact


def test_restore_order_roles_then_receive_drop_and_pg_restore_j(tmp_path: Path,
                                                                tools: Path) -> None:
    env, _config, access = setup(tmp_path, tools)
    artifact = app_artifact(tmp_path)
    (tools / "counts").write_text("public.items\x1f1000\nother.We ird\x1f2\npublic.empty_t\x1f0\n")
    section = {"databases": {"backout_app": {"tables": TABLES}}, "absent": ["gone_db"]}
    result = restore_postgresql(env, access, artifact, section)
    assert (tools / "received").read_bytes() == Z0
    assert "ALTER ROLE app_reader" in (tools / "globals-in").read_text()
    made = calls(tools)
    order = [(c[0], next((a for a in c if a.startswith(("DROP", "-j"))), "")) for c in made
             if c[0] in ("pg_restore", "sh", "rm") or (c[0] == "psql" and any(
                 a.startswith("DROP") or a == "-" for a in c))]
    assert [o[0] for o in order[:4]] == ["psql", "sh", "psql", "pg_restore"]
    assert order[2][1] == 'DROP DATABASE IF EXISTS "backout_app" WITH (FORCE)'
    # the received file is removed beside what follows (here: the absent database's drop)
    assert sorted(order[4:]) == [("psql", 'DROP DATABASE IF EXISTS "gone_db" WITH (FORCE)'),
                                 ("rm", "")]
    restore = next(c for c in made if c[0] == "pg_restore")
    assert "--create" in restore and "--exit-on-error" in restore and "-j" in restore
    assert ENGINE.counts_match(section, result["counts"])
    assert not ENGINE.counts_match(section, {"backout_app": {**TABLES, "public.items": 999}})


def test_an_operators_own_pg_dump_file_is_restored_without_roles(tmp_path: Path,
                                                                  tools: Path) -> None:
    env, _config, access = setup(tmp_path, tools)
    artifact = tmp_path / "own.dump"
    artifact.write_bytes(Z0)  # not compressed: zstd -dc -f passes it through
    section = ENGINE.section_for_file(env, access.db, artifact)
    assert section["plain_archive"] is True
    (tools / "counts").write_text("")
    assert section["databases"] == {"backout_app": {
        "tables": TABLES, "large_objects": 1, "toc_entries": 18, "archive_version": "1.14.0"}}
    restore_postgresql(env, access, artifact, section)
    assert (tools / "received").read_bytes() == Z0
    assert not (tools / "globals-in").exists()
    assert [c[0] for c in calls(tools) if c[0] in ("sh", "pg_restore", "rm")] == [
        "sh", "pg_restore", "rm"]


def test_a_failing_pg_restore_removes_the_received_file_and_fails(tmp_path: Path,
                                                                  tools: Path) -> None:
    env, _config, access = setup(tmp_path, tools)
    artifact = app_artifact(tmp_path)
    (tools / "fail-pg_restore").write_text("pg_restore: error: could not execute query\n")
    with pytest.raises(ExternalError, match="pg_restore of backout_app failed"):
        restore_postgresql(env, access, artifact, {"databases": {"backout_app": {"tables": {}}}})
    assert [c[0] for c in calls(tools)][-1] == "rm"


def test_probe_asks_the_version_and_pg_isready_names_what_a_silent_server_does(
        tmp_path: Path, tools: Path) -> None:
    _env, _config, access = setup(tmp_path, tools)
    assert ENGINE.probe(access) == "15.18"
    assert [c[0] for c in calls(tools)] == ["psql"]  # one process when it answers
    assert "dbname=postgres connect_timeout=5" in calls(tools)[0]  # never waits for ever
    (tools / "fail-psql").write_text("psql: error: connection refused\n")
    (tools / "fail-pg_isready").write_text("")
    with pytest.raises(ExternalError, match="rejecting connections"):
        ENGINE.probe(access)
    assert [c[0] for c in calls(tools)][1:] == ["psql", "pg_isready"]
    # the server accepts connections, psql still fails (a wrong password): psql's error
    (tools / "fail-pg_isready").unlink()
    with pytest.raises(ExternalError) as raised:
        ENGINE.probe(access)
    assert "rejecting" not in str(raised.value)
