"""The parallel MySQL load (engines/mysqlload.py): how a dump is split, the order the
sessions see it in (fakes that record every send and sync), and a real client
process (a stand-in that prints the sync tokens, fails on demand)."""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backout.engines.mysqlload import (
    ClientSession,
    DumpStream,
    Head,
    Main,
    Rows,
    load,
    load_in_parallel,
    split_dump,
)
from backout.environment import Environment
from backout.errors import ExternalError
from backout.storage.pipeline import IntegrityError

# the sandbox line ends with a space, as mariadb-dump writes it
DUMP = b"/*M!999999\\- enable the sandbox mode */ \n" + b"""-- MariaDB dump 10.19  Distrib 10.11.18-MariaDB, for debian-linux-gnu (x86_64)
--
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET NAMES utf8mb4 */;
/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;

--
-- Current Database: `shop`
--

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;

USE `shop`;

--
-- Table structure for table `items`
--

DROP TABLE IF EXISTS `items`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8mb4 */;
CREATE TABLE `items` (
  `id` bigint(20) NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
/*!40101 SET character_set_client = @saved_cs_client */;

LOCK TABLES `items` WRITE;
/*!40000 ALTER TABLE `items` DISABLE KEYS */;
INSERT INTO `items` VALUES
(1,'a;b'),
(2,'c');
INSERT INTO `items` VALUES (3,'d');
/*!40000 ALTER TABLE `items` ENABLE KEYS */;
UNLOCK TABLES;
/*!50003 SET @saved_cs_client      = @@character_set_client */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`%`*/ /*!50003 TRIGGER items_new AFTER INSERT ON items FOR EACH ROW
    INSERT INTO tags (item_id) VALUES (NEW.id) */;;
DELIMITER ;

--
-- Table structure for table `tags`
--

DROP TABLE IF EXISTS `tags`;
CREATE TABLE `tags` (
  `item_id` bigint(20) NOT NULL
) ENGINE=InnoDB;

LOCK TABLES `tags` WRITE;
INSERT INTO `tags` VALUES (1),(2);
UNLOCK TABLES;
/*!50001 CREATE VIEW `names` AS SELECT 1 AS `id` */;
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;

-- Dump completed on 2026-12-04 15:33:21
"""


def events() -> list[object]:
    return list(split_dump(DUMP.splitlines(keepends=True)))


def test_the_head_goes_to_every_session_and_rows_are_whole_statements() -> None:
    got = events()
    assert isinstance(got[0], Head)
    assert got[0].text.startswith(b"/*M!999999")
    assert b"FOREIGN_KEY_CHECKS=0 */;" in got[0].text and b"CREATE" not in got[0].text
    rows = [e for e in got if isinstance(e, Rows)]
    assert [(r.database, r.table, r.first) for r in rows] == [
        (b"shop", b"items", True), (b"shop", b"items", False), (b"shop", b"tags", True)]
    assert rows[0].statement == b"INSERT INTO `items` VALUES\n(1,'a;b'),\n(2,'c');\n"
    assert rows[1].statement == b"INSERT INTO `items` VALUES (3,'d');\n"
    main = b"".join(e.text for e in got if isinstance(e, Main))
    # the locks and key switches around the rows are left out; nothing else is
    assert b"LOCK TABLES" not in main and b"DISABLE KEYS" not in main
    everything = got[0].text + main + b"".join(r.statement for r in rows)
    kept = [line for line in DUMP.splitlines(keepends=True)
            if not line.startswith((b"LOCK TABLES", b"UNLOCK TABLES", b"/*!40000 ALTER TABLE"))]
    assert sorted(everything.splitlines(keepends=True)) == sorted(kept)


def test_only_table_and_database_definitions_pass_without_a_barrier() -> None:
    plain = {e.text.splitlines()[0]: e.barrier for e in events() if isinstance(e, Main)}
    assert plain[b"CREATE TABLE `items` ("] is False
    assert plain[b"DROP TABLE IF EXISTS `tags`;"] is False
    assert plain[b"USE `shop`;"] is False
    assert plain[b"DELIMITER ;;"] is True
    assert plain[b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`%`*/ /*!50003 TRIGGER items_new "
                 b"AFTER INSERT ON items FOR EACH ROW"] is True
    assert plain[b"/*!50001 CREATE VIEW `names` AS SELECT 1 AS `id` */;"] is True
    assert plain[b"/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;"] is True


def test_a_statement_between_lock_and_unlock_runs_in_order_on_the_main_session() -> None:
    odd = DUMP.replace(b"INSERT INTO `items` VALUES (3,'d');\n",
                       b"SET @x = 1;\nINSERT INTO `items` VALUES (3,'d');\n")
    got = list(split_dump(odd.splitlines(keepends=True)))
    at = next(i for i, e in enumerate(got) if isinstance(e, Main) and e.text == b"SET @x = 1;\n")
    assert got[at].barrier is True
    assert isinstance(got[at - 1], Rows) and isinstance(got[at + 1], Rows)


def test_a_statement_keeps_its_blank_and_comment_lines_and_no_rows_start_inside_it() -> None:
    body = (b"DELIMITER ;;\nCREATE PROCEDURE p()\nBEGIN\n\n-- a comment in the body\n"
            b"LOCK TABLES `items` WRITE;\nSELECT 1;\nEND ;;\nDELIMITER ;\n")
    got = list(split_dump(DUMP.replace(b"UNLOCK TABLES;\n/*!50001", b"UNLOCK TABLES;\n" + body
                                       + b"/*!50001").splitlines(keepends=True)))
    procedure = [e for e in got if isinstance(e, Main) and e.text.startswith(b"CREATE PROCEDURE")]
    assert [e.text for e in procedure] == [b"CREATE PROCEDURE p()\nBEGIN\n\n-- a comment in the "
                                           b"body\nLOCK TABLES `items` WRITE;\nSELECT 1;\nEND ;;\n"]
    assert procedure[0].barrier
    assert len([e for e in got if isinstance(e, Rows)]) == 3  # the body's LOCK is no block


def test_mysql8_gtid_session_lines_are_head_and_the_global_one_is_not() -> None:
    dump = DUMP.replace(b"\n--\n-- Current Database", b"SET @MYSQLDUMP_TEMP_LOG_BIN = "
                        b"@@SESSION.SQL_LOG_BIN;\nSET @@SESSION.SQL_LOG_BIN= 0;\n\n"
                        b"SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ 'uuid:1-9';\n"
                        b"\n--\n-- Current Database")
    got = list(split_dump(dump.splitlines(keepends=True)))
    assert isinstance(got[0], Head) and b"SQL_LOG_BIN= 0;" in got[0].text
    assert b"GTID_PURGED" not in got[0].text
    assert isinstance(got[1], Main) and got[1].text.startswith(b"SET @@GLOBAL.GTID_PURGED")
    # MySQL 8 writes the character set switch around CREATE TABLE as /*!50503 ...*/:
    # still a table definition, no barrier (else tables would never load side by side)
    eight = dump.replace(b"/*!40101 SET character_set_client = utf8mb4 */;",
                         b"/*!50503 SET character_set_client = utf8mb4 */;")
    switch = [e for e in split_dump(eight.splitlines(keepends=True))
              if isinstance(e, Main) and e.text.startswith(b"/*!50503 SET character_set_client")]
    assert switch and not switch[0].barrier


def test_only_literal_rows_of_the_locked_table_go_to_any_session() -> None:
    # a hand-made SQL file given as BACKUP: an INSERT ... SELECT and an INSERT into
    # another table inside the block run on the main session, in order, and the rows
    # after them wait for them (a sync)
    odd = DUMP.replace(b"INSERT INTO `items` VALUES (3,'d');\n",
                       b"INSERT INTO `tags` SELECT id FROM `items`;\n"
                       b"INSERT INTO `items` (`id`, `name`) VALUES (4,'e');\n"
                       b"UPDATE `items` SET `id` = `id` + 10;\n"
                       b"REPLACE INTO `items` VALUES (5,'f');\n"
                       b"INSERT IGNORE INTO `items` VALUES (6,'g');\n")
    got = [e for e in split_dump(odd.splitlines(keepends=True))
           if isinstance(e, (Main, Rows)) and b"items" in (e.text if isinstance(e, Main)
                                                             else e.statement)]
    shapes = [(type(e).__name__, e.barrier if isinstance(e, Main) else e.first,
               (e.text if isinstance(e, Main) else e.statement).split(b" VALUES")[0][:30])
              for e in got if not (isinstance(e, Main) and e.text.startswith((b"--", b"DROP",
                                                                              b"CREATE", b"/*")))]
    assert shapes == [
        ("Rows", True, b"INSERT INTO `items`"),
        ("Main", True, b"INSERT INTO `tags` SELECT id F"),
        ("Rows", True, b"INSERT INTO `items` (`id`, `na"),
        ("Main", True, b"UPDATE `items` SET `id` = `id`"),
        ("Rows", True, b"REPLACE INTO `items`"),
        ("Rows", False, b"INSERT IGNORE INTO `items`"),
    ]


def test_a_dump_that_ends_inside_an_insert_hands_the_rest_to_the_main_session() -> None:
    cut = DUMP[:DUMP.index(b"(2,'c');")]
    got = list(split_dump(cut.splitlines(keepends=True)))
    assert isinstance(got[-1], Main) and got[-1].barrier
    assert got[-1].text.startswith(b"INSERT INTO `items` VALUES\n(1,'a;b'),")


def _random_rows_dump(rng: random.Random) -> tuple[bytes, list[bytes]]:
    """DUMP with INSERTs that end where a splitter can go wrong: ';' inside strings and
    at the end of a string on a row's line, CRLF and CR-CR-LF line ends, a statement
    on one line, a ';' alone on the last line, a statement cut by the dump's end
    (then no INSERTs are returned; else the INSERTs as written)."""
    values = [b"'a;b'", b"';'", b"'x;\\''", b"NULL", b"42", b"'semi;'"]
    blocks = []
    for _ in range(rng.randint(1, 6)):
        end = rng.choice([b"\n", b"\r\n", b"\r\r\n"])
        rows = [b"(" + b",".join(rng.choice(values) for _ in range(rng.randint(1, 3))) + b")"
                for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.3:
            body = b",".join(rows) + b";" + end
        elif rng.random() < 0.2:
            body = b"\n" + (b",\n".join(rows)) + b"\n;" + end
        else:
            body = b"\n" + (b"," + end).join(rows) + b";" + end
        blocks.append(b"INSERT INTO `items` VALUES" + (b" " if body[:1] == b"(" else b"")
                      + body)
    rows_part = b"".join(blocks)
    data = DUMP.replace(b"INSERT INTO `items` VALUES\n(1,'a;b'),\n(2,'c');\n"
                        b"INSERT INTO `items` VALUES (3,'d');\n", rows_part)
    if rng.random() < 0.2:  # the dump ends inside the rows
        return data[:data.index(b"INSERT INTO `items`") + rng.randint(20, len(rows_part))], []
    return data, blocks


def test_the_dump_read_a_chunk_at_a_time_splits_as_its_lines_do() -> None:
    """DumpStream (a statement's rows found by the ';' ending a line, across reads of
    any size) gives the events the same dump gives a line at a time."""
    rng = random.Random(11)
    shapes = {"rows": 0, "cut inside an insert": 0}
    for case in range(200):
        data, blocks = _random_rows_dump(rng)
        expected = list(split_dump(re.findall(rb"[^\n]*\n|[^\n]+$", data)))
        if blocks:  # whole: each INSERT is one statement of rows, as written
            assert [e.statement for e in expected if isinstance(e, Rows)
                    and e.table == b"items"] == blocks
        shapes["rows"] += sum(isinstance(e, Rows) for e in expected)
        shapes["cut inside an insert"] += any(
            isinstance(e, Main) and e.text.startswith(b"INSERT INTO `items`") for e in expected)
        for size in (1, 2, 3, 7, 64, 4096):
            count = [0]
            got = list(split_dump(DumpStream(io.BytesIO(data), count, size)))
            assert got == expected, (case, size, data)
            assert count[0] == len(data)
    assert shapes["rows"] > 300 and shapes["cut inside an insert"] > 10, shapes


class _Watched(DumpStream):
    """A DumpStream that keeps the largest buffer it has held."""

    largest = 0

    def _read_on(self, keep: int, parts: list[bytes]) -> int | None:
        moved = super()._read_on(keep, parts)
        self.largest = max(self.largest, len(self._buf))
        return moved


def test_a_line_or_statement_over_many_reads_does_not_grow_the_buffer() -> None:
    """Rows with a large value (a BLOB) span many reads, in a one-line INSERT (read as
    a line) and a row-per-line one (gathered to its ';'): the buffer holds two reads at
    most; the rest waits in pieces joined once (a buffer grown by every read was
    copied whole at each: quadratic in the statement)."""
    blob = b"x" * 5000
    data = DUMP.replace(b"(2,'c');", b"(2,'" + blob + b"'),\n(4,'" + blob + b";" + blob
                        + b"');").replace(b"(3,'d');", b"(3,'" + blob + b"');")
    expected = list(split_dump(re.findall(rb"[^\n]*\n|[^\n]+$", data)))
    assert sum(len(e.statement) > 10_000 for e in expected if isinstance(e, Rows)) == 1
    stream = _Watched(io.BytesIO(data), [0], 64)
    assert list(split_dump(stream)) == expected
    assert 64 <= stream.largest <= 2 * 64


class Recorder:
    """A session that records what it is sent; ``busy`` rows stay in its backlog."""

    def __init__(self, name: str, log: list[tuple[str, str]], busy: bool = False) -> None:
        self.name, self.log, self.busy = name, log, busy
        self.pending = 0
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.log.append((self.name, "send " + data.decode().splitlines()[-1][:40] if data else ""))
        if self.busy and b"INSERT" in data:
            self.pending += len(data)

    def sync(self) -> None:
        self.pending = 0
        self.log.append((self.name, "sync"))

    def backlog(self) -> int:
        return self.pending

    def finish(self) -> None:
        self.log.append((self.name, "finish"))

    def kill(self) -> None:
        self.log.append((self.name, "kill"))


def _run(workers: int, busy: bool, made: list[Recorder] | None = None
         ) -> tuple[list[tuple[str, str]], dict[str, int]]:
    log: list[tuple[str, str]] = []
    main = Recorder("main", log)

    def worker(n: int) -> Recorder:
        session = Recorder(f"w{n}", log, busy)
        (made if made is not None else []).append(session)
        return session

    counts = load(events(), main, worker, workers)
    return log, counts


@pytest.mark.parametrize("busy", [False, True])
def test_rows_wait_for_their_table_and_a_trigger_waits_for_every_row(busy: bool) -> None:
    log, counts = _run(workers=2, busy=busy)
    at = {entry: i for i, entry in reversed(list(enumerate(log)))}  # first index of each
    create_items = at[("main", "send ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;")]
    row_sends = [i for i, (who, what) in enumerate(log)
                 if who.startswith("w") and what.startswith(("send INSERT", "send (2,'c');"))]
    first_sync = at[("main", "sync")]
    assert create_items < first_sync < min(row_sends)
    trigger = at[("main", "send DELIMITER ;;")]
    items_rows = [i for i in row_sends if i < trigger]
    started = {who for who, what in log[:trigger] if who.startswith("w")}
    synced = {who for i, (who, what) in enumerate(log)
              if max(items_rows) < i < trigger and what == "sync"}
    assert started and synced == started  # every row of items loaded before the trigger
    # the main session finishes last (the tail after every row)
    assert log[-1] == ("main", "finish")
    assert counts["statements_in_parallel"] == 3 and counts["syncs"] == 2
    # idle workers are reused; a second starts only while the first is busy
    assert counts["workers"] == (2 if busy else 1)


def test_every_worker_starts_with_the_head_and_names_the_database() -> None:
    made: list[Recorder] = []
    _run(workers=2, busy=True, made=made)
    head = events()[0]
    assert isinstance(head, Head) and len(made) == 2
    for session in made:
        assert session.sent[0] == head.text
        assert all(data.startswith(b"USE `shop`;\nINSERT INTO") for data in session.sent[1:])


FAKE_CLIENT = textwrap.dedent('''
    import sys, time
    for line in sys.stdin:
        if line.startswith("SELECT 'backout-sync-"):
            token = line.split("'")[1]
            print(token); print(token); sys.stdout.flush()
        elif line.startswith("FAIL"):
            print("ERROR 1064 (42000) at line 9: You have an error near "
                  + repr(__import__("os").environ.get("MYSQL_PWD")), file=sys.stderr)
            sys.exit(1)
        elif line.startswith("SLOW"):
            time.sleep(0.5)
''')


def _client(tmp_path: Path) -> ClientSession:
    script = tmp_path / "fake_client.py"
    script.write_text(FAKE_CLIENT)
    return ClientSession(Environment(env=dict(os.environ)), [sys.executable, str(script)],
                         {"MYSQL_PWD": "s3cret-pw"}, str(tmp_path), "restore (session 1)")


def test_a_client_session_syncs_after_what_it_was_sent(tmp_path: Path) -> None:
    s = _client(tmp_path)
    start = time.monotonic()
    s.send(b"SLOW\n" * 2)
    s.sync()  # returns after both SLOW lines ran: the token comes after them
    assert time.monotonic() - start >= 1.0
    s.sync()
    s.finish()


def test_a_failing_client_fails_the_load_with_its_last_line(tmp_path: Path) -> None:
    s = _client(tmp_path)
    s.send(b"FAIL\n")
    with pytest.raises(ExternalError, match=r"session 1\) failed \(exit 1\): ERROR 1064") as e:
        s.sync()
    assert "s3cret-pw" not in str(e.value)  # what the client printed is redacted
    with pytest.raises(ExternalError):
        s.send(b"more\n")


RECORDING_CLIENT = textwrap.dedent('''
    import sys
    out = open(sys.argv[1], "a")
    for line in sys.stdin:
        if line.startswith("SELECT 'backout-sync-"):
            print(line.split("'")[1], flush=True)
            continue
        if "(666," in line:
            print("ERROR 1062 (23000) at line 3: Duplicate entry '666'", file=sys.stderr)
            sys.exit(1)
        out.write(line)
        out.flush()
''')


def _big_dump(rows: int, bad: bool = False) -> bytes:
    # ids from 1000: only the bad row is 666, the one the recording client refuses,
    # early: zstd is still writing when the loader stops (its queues hold 8 MB each)
    body = b"".join(b"INSERT INTO `items` VALUES (%d,'r');\n" % (666 if bad and i == 1000
                                                             else 1000 + i) for i in range(rows))
    return DUMP.replace(b"INSERT INTO `items` VALUES (3,'d');\n", body)


def _load(tmp_path: Path, dump: bytes, sessions: int = 2) -> list[Path]:
    raw = tmp_path / "dump.sql"
    raw.write_bytes(dump)
    subprocess.run(["zstd", "-q", "-f", str(raw), "-o", str(tmp_path / "dump.sql.zst")],
                   check=True)
    script = tmp_path / "client.py"
    script.write_text(RECORDING_CLIENT)
    logs: list[Path] = []

    def session(name: str) -> ClientSession:
        logs.append(tmp_path / f"session-{len(logs)}.sql")
        return ClientSession(Environment(env=dict(os.environ)),
                             [sys.executable, str(script), str(logs[-1])], {}, None, name)

    load_in_parallel(Environment(env=dict(os.environ)), tmp_path / "dump.sql.zst", session,
                     sessions, what="t restore", stall=30)
    return logs


def test_every_row_lands_once_and_the_schema_in_order(tmp_path: Path) -> None:
    logs = _load(tmp_path, _big_dump(3000))
    main = logs[0].read_text()
    assert "CREATE TABLE `items`" in main and "INSERT INTO `items` VALUES" not in main
    rows = [line for log in logs[1:] for line in log.read_text().splitlines()
            if line.startswith("INSERT INTO `items` VALUES (")]
    assert sorted(rows) == sorted(f"INSERT INTO `items` VALUES ({1000 + i},'r');"
                                  for i in range(3000))


def test_a_failing_session_is_named_not_the_artifact(tmp_path: Path) -> None:
    # the loader kills zstd when a session fails: zstd's death must not read as a
    # corrupt backup (the reviewer's reproduction: "does not decompress")
    with pytest.raises(ExternalError, match="Duplicate entry") as caught:
        _load(tmp_path, _big_dump(800_000, bad=True))
    assert not isinstance(caught.value, IntegrityError)


def test_an_artifact_that_does_not_decompress_is_an_integrity_error(tmp_path: Path) -> None:
    raw = tmp_path / "dump.sql"
    raw.write_bytes(_big_dump(50_000))
    subprocess.run(["zstd", "-q", "-f", str(raw), "-o", str(tmp_path / "dump.sql.zst")],
                   check=True)
    blob = bytearray((tmp_path / "dump.sql.zst").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "dump.sql.zst").write_bytes(bytes(blob))
    script = tmp_path / "client.py"
    script.write_text(RECORDING_CLIENT)

    def session(name: str) -> ClientSession:
        return ClientSession(Environment(env=dict(os.environ)),
                             [sys.executable, str(script), str(tmp_path / "s.sql")], {}, None, name)

    with pytest.raises(IntegrityError, match="does not decompress"):
        load_in_parallel(Environment(env=dict(os.environ)), tmp_path / "dump.sql.zst", session,
                         2, what="t restore", stall=30)
