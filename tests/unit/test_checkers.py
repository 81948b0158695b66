"""The format checkers on synthetic artifacts: MySQL dumps (MariaDB's one-row-per-line and
MySQL's single-line INSERTs), hand-made RDB files, and tars of BSON documents.

Every input is fed in several chunkings (whole, odd sizes, one byte at a time), since
the real checkers see the decompressed stream in arbitrary pieces.
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest

from backout.engines import formats
from backout.engines.formats import HEADER_LINES, MySQLDumpChecker, RDBChecker, TarBsonChecker
from backout.storage import crc64 as crc64_module
from backout.storage.crc64 import CRC64, FoldingCRC64, crc64, crc64_table
from backout.storage.pipeline import IntegrityError

CHUNKINGS = [0, 1, 7, 512, 4096]  # 0: all at once


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    if size == 0:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i:i + size]


def run(checker: Any, data: bytes, size: int = 0) -> dict[str, Any]:
    for piece in chunks(data, size):
        checker.feed(piece)
    result: dict[str, Any] = checker.finish()
    return result


# --------------------------------------------------------------------------- MySQL


HEAD = b"""-- MariaDB dump 10.19  Distrib 10.11.6-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: localhost    Database: shop
-- ------------------------------------------------------
-- Server version\t10.11.6-MariaDB-0+deb12u1-log

/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
--
-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000042', MASTER_LOG_POS=1234;
-- SET GLOBAL gtid_slave_pos='0-1-77';
--

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;

USE `shop`;
"""
TRAILER = b"""/*!40111 SET SQL_NOTES=@OLD_SQL_NOTES */;

-- Dump completed on 2026-11-27 12:17:51
"""

# MariaDB: "INSERT INTO `t` VALUES" alone on its line, then one row per line.
MARIADB_BODY = rb"""
DROP TABLE IF EXISTS `notes`;
CREATE TABLE `notes` (
  `id` int(11) NOT NULL,
  `body` text NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB;

LOCK TABLES `notes` WRITE;
INSERT INTO `notes` VALUES
(1,'plain'),
(2,'a),(b'),
(3,'it\'s (nested (parens)) and \'quotes\''),
(4,'ends with a backslash\\'),
(5,'semicolon; and ),( and );'),
(6,''),
(7,NULL),
(8,'line one\nline two with ( and \r'),
(9,'\\\'(\\'),
(10,0x28292C28);
UNLOCK TABLES;

DROP TABLE IF EXISTS `empty_table`;
CREATE TABLE `empty_table` (
  `id` int(11) NOT NULL
) ENGINE=InnoDB;

DROP TABLE IF EXISTS `odd``name`;
CREATE TABLE `odd``name` (
  `id` int(11) NOT NULL
) ENGINE=InnoDB;
LOCK TABLES `odd``name` WRITE;
INSERT INTO `odd``name` VALUES
(1),
(2);
INSERT INTO `odd``name` VALUES
(3);
UNLOCK TABLES;
"""

# MySQL: the whole extended INSERT on one line.
MYSQL_BODY = rb"""
DROP TABLE IF EXISTS `notes`;
CREATE TABLE `notes` (
  `id` int NOT NULL,
  `body` text NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB;
LOCK TABLES `notes` WRITE;
INSERT INTO `notes` VALUES (1,'plain'),(2,'a),(b'),(3,'it\'s (nested (parens)) and \'quotes\''),(4,'ends with a backslash\\'),(5,'semicolon; and ),( and );'),(6,''),(7,NULL),(8,'line one\nline two with ( and \r'),(9,'\\\'(\\'),(10,0x28292C28);
INSERT INTO `notes` VALUES (11,'second statement: ('),(12,'x');
UNLOCK TABLES;
DROP TABLE IF EXISTS `empty_table`;
CREATE TABLE `empty_table` (
  `id` int NOT NULL
) ENGINE=InnoDB;
"""


@pytest.mark.parametrize("size", CHUNKINGS)
def test_mariadb_one_row_per_line(size: int) -> None:
    result = run(MySQLDumpChecker(["shop"], "t"), HEAD + MARIADB_BODY + TRAILER, size)
    assert result["databases"] == {"shop": {"tables": {"notes": 10, "empty_table": 0,
                                                       "odd`name": 3}}}
    assert result["binlog"] == {"file": "mysql-bin.000042", "position": 1234, "gtid": "0-1-77"}
    assert result["server_version"] == "10.11.6-MariaDB-0+deb12u1-log"


PLAIN_PIECES = [rb"'plain'", rb"'ends\\'", rb"'x;'", rb"''", b"NULL", b"42", b"0x2b2c",
                rb"'semi; ;'"]


def _random_dump(rng: random.Random, plain: float = 0.0) -> bytes:
    """A dump whose values hold what trips a row counter: parentheses, semicolons and
    quotes inside strings, escaped quotes and backslashes, a string ending a line
    with ';', an unterminated quote (a damaged dump), blank and whitespace lines.
    ``plain``: the share of INSERTs whose values hold no parenthesis (the rows the
    block counter counts as lines)."""
    pieces = [rb"'plain'", rb"'a),(b'", rb"'it\'s ('", rb"'ends\\'", rb"'x;'", rb"''",
              b"NULL", b"0x2829", rb"'\\\'(\\'", rb"'semi; );'", b"42", rb"'tab\t('"]
    out = [HEAD]
    for t in range(rng.randint(1, 4)):
        out.append(b"CREATE TABLE `t%d` (\n  `id` int(11) NOT NULL\n) ENGINE=InnoDB;\n" % t)
        for _ in range(rng.randint(0, 3)):
            chosen = PLAIN_PIECES if rng.random() < plain else pieces
            # odd: an INSERT broken across lines otherwise (several rows on a line, a
            # row across two), as no dump tool writes but a damaged file may hold
            odd = rng.random() < 0.1
            rows = [b"(" + (b",\n" if odd and rng.random() < 0.3 else b",").join(
                        rng.choice(chosen) for _ in range(rng.randint(1, 4)))
                    + b")" for _ in range(rng.randint(1, 30))]
            if rng.random() < 0.5:  # MariaDB: a row per line
                body = b"".join(row + (b"," if odd and rng.random() < 0.5 else b",\n")
                                for row in rows[:-1]) + rows[-1]
                out.append(b"INSERT INTO `t%d` VALUES\n" % t + body + b";\n")
            else:  # MySQL: the statement on one line
                out.append(b"INSERT INTO `t%d` VALUES " % t + b",".join(rows) + b";\n")
            if rng.random() < 0.2:
                out.append(b"   \n\n")
        if rng.random() < 0.1:
            out.append(b"INSERT INTO `t%d` VALUES\n(1,'unterminated;\n(2);\n" % t)
    if rng.random() < 0.8:
        out.append(TRAILER)
    return b"".join(out)


@pytest.mark.parametrize("plain", [0.0, 0.8])
def test_rows_counted_a_block_at_a_time_match_the_line_by_line_oracle(plain: float) -> None:
    """The block counter (fast, regexes and counts over many lines) against the plain
    per-line reading on random dumps cut into random chunks: the same counts, the same
    verdict; ``plain``: most INSERTs without a parenthesis in their values, so that
    most blocks are counted as lines."""
    rng = random.Random(7)
    for case in range(300):
        data = _random_dump(rng, plain)
        answers = []
        for per_line in (True, False):
            checker = MySQLDumpChecker(["shop"], "t")
            checker.per_line = per_line
            size = rng.choice([1, 3, 17, 64, 4096, len(data)])
            try:
                answers.append(run(checker, data, size))
            except IntegrityError as exc:
                answers.append({"refused": str(exc)})
            # exact as far as the header window, the count's only use
            answers[-1]["lines"] = min(checker.lines, HEADER_LINES)
        assert answers[0] == answers[1], (case, data)


def _verdict(checker: MySQLDumpChecker, pieces: list[bytes]) -> dict[str, Any]:
    try:
        for piece in pieces:
            checker.feed(piece)
        answer = checker.finish()
    except IntegrityError as exc:
        answer = {"refused": str(exc)}
    answer["lines"] = min(checker.lines, HEADER_LINES)
    return answer


@pytest.mark.parametrize("end", [TRAILER, TRAILER + b"\n  \n",
                                 b"UNLOCK TABLES;\n-- Dump completed on 2026-11-27\n",
                                 TRAILER + b"-- not the trailer\n"])
def test_a_dump_cut_in_two_anywhere_reads_as_the_line_by_line_oracle(end: bytes) -> None:
    """The block reader completes the line begun in the previous chunk apart and reads
    the rest of the chunk in place: every cut of one dump into two chunks (inside the
    trailer, between a line and the trailer or the blank lines after it, before a ';'
    alone on a line) gives the oracle's counts and verdict."""
    data = (HEAD + MARIADB_BODY + b"INSERT INTO `notes` VALUES\n(11,'x')\n;\n"
            b"INSERT INTO `odd``name` VALUES (4,'(');\n" + end)
    oracle = MySQLDumpChecker(["shop"], "t")
    oracle.per_line = True
    expected = _verdict(oracle, [data])
    refused = end.endswith(b"-- not the trailer\n")
    assert ("refused" in expected) == refused
    if not refused:
        assert expected["databases"]["shop"]["tables"] == {"notes": 11, "empty_table": 0,
                                                           "odd`name": 4}
    for cut in range(len(data) + 1):
        got = _verdict(MySQLDumpChecker(["shop"], "t"), [data[:cut], data[cut:]])
        assert got == expected, cut


@pytest.mark.parametrize("size", CHUNKINGS)
def test_mysql_single_line_inserts(size: int) -> None:
    result = run(MySQLDumpChecker(["shop"], "t"), HEAD + MYSQL_BODY + TRAILER, size)
    assert result["databases"] == {"shop": {"tables": {"notes": 12, "empty_table": 0}}}


def test_rows_are_counted_per_database() -> None:
    second = (b"CREATE DATABASE `crm`;\nUSE `crm`;\nCREATE TABLE `people` (\n  `id` int\n);\n"
              b"INSERT INTO `people` VALUES (1),(2);\n")
    result = run(MySQLDumpChecker(["shop", "crm"], "t"), HEAD + MYSQL_BODY + second + TRAILER)
    assert result["databases"]["crm"] == {"tables": {"people": 2}}
    assert result["databases"]["shop"]["tables"]["notes"] == 12


def test_a_dump_without_trailer_is_refused() -> None:
    with pytest.raises(IntegrityError, match="Dump completed"):
        run(MySQLDumpChecker(["shop"], "mysql dump"), HEAD + MARIADB_BODY)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_truncated_dump_is_refused(cut: float) -> None:
    data = HEAD + MARIADB_BODY + TRAILER
    with pytest.raises(IntegrityError, match="trailer"):
        run(MySQLDumpChecker(["shop"], "t"), data[: int(len(data) * cut)])


def test_the_trailer_must_be_the_last_line() -> None:
    data = HEAD + TRAILER + MARIADB_BODY  # a trailer in the middle proves nothing
    with pytest.raises(IntegrityError, match="trailer"):
        run(MySQLDumpChecker(["shop"], "t"), data)


def test_the_trailer_without_final_newline_counts() -> None:
    data = HEAD + MARIADB_BODY + TRAILER.rstrip(b"\n")
    assert run(MySQLDumpChecker(["shop"], "t"), data)["databases"]["shop"]["tables"]["notes"] == 10


def test_a_missing_database_is_refused() -> None:
    with pytest.raises(IntegrityError, match="missing from the dump: crm"):
        run(MySQLDumpChecker(["shop", "crm"], "t"), HEAD + MARIADB_BODY + TRAILER)


def test_no_binlog_without_master_data() -> None:
    head = b"\n".join(line for line in HEAD.split(b"\n") if b"MASTER" not in line and b"gtid" not in line)
    result = run(MySQLDumpChecker(["shop"], "t"), head + MARIADB_BODY + TRAILER)
    assert result["binlog"] is None


# --------------------------------------------------------------------------- RDB


def rdb_string(value: bytes) -> bytes:
    assert len(value) < 64
    return bytes([len(value)]) + value


def aux(key: bytes, encoded_value: bytes) -> bytes:
    return b"\xfa" + rdb_string(key) + encoded_value


def make_rdb(*, version: bytes = b"0011", keys: bytes | None = b"\x03", expires: bytes = b"\x01",
             extra_aux: bytes = b"", checksum: int | None = None) -> bytes:
    """An RDB as Redis 7 writes it: magic, AUX fields, SELECTDB 0 + RESIZEDB, entries,
    EOF and its CRC-64 (``checksum`` replaces it, e.g. 0 = disabled)."""
    out = b"REDIS" + version
    out += aux(b"redis-ver", rdb_string(b"7.0.15"))
    out += aux(b"redis-bits", b"\xc0\x40")  # 8-bit integer encoding: 64
    out += aux(b"ctime", b"\xc2" + struct.pack("<I", 1764240000))  # 32-bit integer
    out += aux(b"used-mem", b"\xc2" + struct.pack("<I", 1_000_000))
    out += aux(b"aof-base", b"\xc0\x00")
    out += extra_aux
    if keys is not None:
        out += b"\xfe\x00" + b"\xfb" + keys + expires
        out += b"\x00" + rdb_string(b"k1") + rdb_string(b"v1")
        out += b"\xfc" + struct.pack("<Q", 1_900_000_000_000) + b"\x00" + rdb_string(b"k2") \
            + rdb_string(b"v2")
        out += b"\x00" + rdb_string(b"k3") + rdb_string(b"v3")
    out += b"\xff"
    return out + struct.pack("<Q", crc64_table(out) if checksum is None else checksum)


@pytest.mark.parametrize("size", CHUNKINGS)
def test_rdb_version_and_key_count(size: int) -> None:
    data = make_rdb()
    assert run(RDBChecker("t"), data, size) == {"rdb_version": 11, "keys": {"db0": 3},
                                                 "bytes": len(data), "checksum": "ok"}


@pytest.mark.parametrize(("encoded", "count"), [
    (b"\x41\x2c", 300),  # 14-bit length
    (b"\x80" + struct.pack(">I", 70_000), 70_000),  # 32-bit length
    (b"\x81" + struct.pack(">Q", 5_000_000_000), 5_000_000_000),  # 64-bit length
])
def test_rdb_long_key_counts(encoded: bytes, count: int) -> None:
    assert run(RDBChecker("t"), make_rdb(keys=encoded))["keys"] == {"db0": count}


def test_rdb_lzf_and_14_bit_aux_values_are_skipped() -> None:
    long_value = b"x" * 100
    extra = aux(b"big", b"\x40\x64" + long_value)  # 14-bit length string
    extra += aux(b"lzf", b"\xc3" + b"\x05" + b"\x0a" + b"\x01abcde"[:5])  # LZF: clen 5, ulen 10
    assert run(RDBChecker("t"), make_rdb(extra_aux=extra))["keys"] == {"db0": 3}


def test_rdb_empty_keyspace() -> None:
    assert run(RDBChecker("t"), make_rdb(keys=None))["keys"] == {}


def test_rdb_without_magic_is_refused() -> None:
    with pytest.raises(IntegrityError, match="not an RDB"):
        run(RDBChecker("t"), b"NOTREDIS" + make_rdb()[8:])


@pytest.mark.parametrize("cut", [1, 5, 8, 20])
def test_truncated_rdb_is_refused(cut: int) -> None:
    with pytest.raises(IntegrityError, match="truncated"):
        run(RDBChecker("t"), make_rdb()[:-cut])


REAL_RDB = Path(__file__).resolve().parent.parent / "data" / "redis" / "redis-7.0.rdb"


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64])
def test_a_real_redis_rdb_verifies(size: int) -> None:
    """tests/data/redis/redis-7.0.rdb was written by redis-server 7.0.15 (SAVE) with a
    string, a list, a hash, an integer and an LZF-compressed value: its checksum is
    Redis's own, not ours."""
    data = REAL_RDB.read_bytes()
    assert data.startswith(b"REDIS0010") and data[-9] == 0xFF
    checks = run(RDBChecker("t"), data, size)
    assert checks["checksum"] == "ok" and checks["keys"] == {"db0": 5}


@pytest.mark.parametrize("where", [0.3, 0.5, 0.9])
def test_a_flipped_byte_is_a_checksum_mismatch_naming_the_artifact(where: float) -> None:
    data = bytearray(REAL_RDB.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    with pytest.raises(IntegrityError, match=r"^backup X: redis.rdb.zst: RDB checksum mismatch"):
        run(RDBChecker("backup X: redis.rdb.zst"), bytes(data), 16)


def test_a_flipped_checksum_byte_is_a_mismatch() -> None:
    data = bytearray(make_rdb())
    data[-3] ^= 0x80
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        run(RDBChecker("t"), bytes(data))


def test_a_zero_checksum_means_disabled() -> None:
    data = bytearray(make_rdb(checksum=0))
    data[20] ^= 0x01  # undetectable without a checksum: the structure still parses
    assert run(RDBChecker("t"), bytes(data))["checksum"] == "disabled"


def test_crc64_check_value_and_both_implementations_agree() -> None:
    assert crc64(b"123456789") == crc64_table(b"123456789") == 0xE9C6D914C4B8D9CA
    assert crc64(b"") == crc64_table(b"") == 0
    rng = random.Random(3)
    for n in (1, 7, 8, 63, 64, 65, 4096, 65536 + 13, 200_000):
        data = rng.randbytes(n)
        for streamed in (CRC64(), FoldingCRC64()):
            for piece in chunks(data, rng.choice([1, 5, 4096, 70_000])):
                streamed.update(piece)
            assert streamed.value() == crc64_table(data), (n, type(streamed))


def test_the_c_crc64_is_the_one_used_where_anycrc_installs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """anycrc is a dependency with wheels for the platforms backout runs on: the RDB
    check runs at its speed, and the pure-Python code takes over without it."""
    assert crc64_module._FAST is not None
    assert type(CRC64()).__name__ == "_CCRC64"
    monkeypatch.setattr(crc64_module, "_FAST", None)
    assert isinstance(CRC64(), FoldingCRC64)
    data = make_rdb()
    assert run(RDBChecker("t"), data)["checksum"] == "ok"  # the fallback still checks


def test_tiny_rdb_is_refused() -> None:
    with pytest.raises(IntegrityError):
        run(RDBChecker("t"), b"REDIS0011\xff")


# --------------------------------------------------------------------------- tar of BSON


DOCS = [{"_id": 1, "name": "Ada", "note": "a),(b"}, {"_id": 2, "nested": {"x": [1, 2, 3]}},
        {"_id": 3, "blob": b"\x00" * 40}]


def member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def make_tar(collections: dict[str, bytes], *, db: str = "app",
             meta: dict[str, bytes | None] | None = None) -> bytes:
    """mongodump's layout: dump/<db>/<coll>.bson + dump/<db>/<coll>.metadata.json."""
    meta = meta or {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for coll, data in collections.items():
            member(tar, f"dump/{db}/{coll}.bson", data)
            metadata = meta.get(coll, json.dumps({"indexes": [], "collectionName": coll}).encode())
            if metadata is not None:
                member(tar, f"dump/{db}/{coll}.metadata.json", metadata)
    return buf.getvalue()


def encode(docs: list[dict[str, Any]]) -> bytes:
    return b"".join(bson.encode(d) for d in docs)


@pytest.mark.parametrize("size", CHUNKINGS)
def test_tar_counts_documents_per_collection(size: int) -> None:
    many = encode([{"_id": i, "pad": "y" * (i % 700)} for i in range(300)])  # spans blocks
    data = make_tar({"customers": encode(DOCS), "empty": b"", "events": many})
    result = run(TarBsonChecker(["app"], "t"), data, size)
    assert result == {"databases": {"app": {"collections": {"customers": 3, "empty": 0,
                                                            "events": 300}}}}


def test_tar_with_long_paths_uses_the_ustar_prefix() -> None:
    db = "d" * 90  # dump/<db>/customers.bson is longer than the 100-byte name field
    data = make_tar({"customers": encode(DOCS)}, db=db)
    assert run(TarBsonChecker([db], "t"), data, 97)["databases"] == {
        db: {"collections": {"customers": 3}}}


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_a_truncated_document_is_refused(cut: int) -> None:
    data = make_tar({"customers": encode(DOCS)[:-cut]})
    with pytest.raises(IntegrityError, match=re.escape("truncated BSON document in dump/app/customers.bson")):
        run(TarBsonChecker(["app"], "t"), data, 64)


def test_a_document_with_an_impossible_length_is_refused() -> None:
    data = make_tar({"customers": encode(DOCS[:1]) + b"\x03\x00\x00\x00\x00"})
    with pytest.raises(IntegrityError, match="corrupt BSON"):
        run(TarBsonChecker(["app"], "t"), data)


def test_a_document_without_its_terminator_is_refused() -> None:
    doc = bytearray(bson.encode(DOCS[0]))
    doc[-1] = 1
    with pytest.raises(IntegrityError, match="corrupt BSON"):
        run(TarBsonChecker(["app"], "t"), make_tar({"customers": bytes(doc)}))


@pytest.mark.parametrize("where", ["mid-member", "before-end-marker", "mid-header"])
def test_a_truncated_archive_is_refused(where: str) -> None:
    data = make_tar({"customers": encode(DOCS)})
    content_end = 3 * 512 + 512  # two members of one block each, plus headers
    cut = {"mid-member": 600, "before-end-marker": content_end, "mid-header": 1024 + 100}[where]
    with pytest.raises(IntegrityError, match="truncated"):
        run(TarBsonChecker(["app"], "t"), data[:cut])


def test_a_collection_without_metadata_is_refused() -> None:
    data = make_tar({"customers": encode(DOCS)}, meta={"customers": None})
    with pytest.raises(IntegrityError, match=re.escape("no metadata.json")):
        run(TarBsonChecker(["app"], "t"), data)


def test_bad_metadata_is_refused() -> None:
    data = make_tar({"customers": encode(DOCS)}, meta={"customers": b"{not json"})
    with pytest.raises(IntegrityError, match="bad metadata"):
        run(TarBsonChecker(["app"], "t"), data)


def test_a_missing_database_is_refused_in_the_tar() -> None:
    with pytest.raises(IntegrityError, match="missing from the dump: other"):
        run(TarBsonChecker(["app", "other"], "t"), make_tar({"customers": encode(DOCS)}))


def test_a_mariadb_dump_of_rows_without_parentheses_blanks_no_string(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The block counter takes such rows as lines (two counts in C): no string is
    blanked, and the count is the oracle's."""
    rows = b",\n".join(b"(%d,'name %d','2026-01-01 00:00:%02d')" % (i, i, i % 60)
                       for i in range(5000))
    data = HEAD + b"INSERT INTO `notes` VALUES\n" + rows + b";\n" + TRAILER
    oracle = MySQLDumpChecker(["shop"], "t")
    oracle.per_line = True
    want = run(oracle, data, 4096)

    class NoBlanking:
        def sub(self, *args: object) -> bytes:
            raise AssertionError("a string was blanked")

    monkeypatch.setattr(formats, "_LINE_STRINGS", NoBlanking())
    assert run(MySQLDumpChecker(["shop"], "t"), data, 4096) == want
    assert want["databases"]["shop"]["tables"]["notes"] == 5000
