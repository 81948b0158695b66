"""The bench's bare parallel-load floor splits a dump the way a person would
(bench/benchmarks.py `_split_dump`): every row statement lands whole in exactly one
part, each part starts with the dump's head, and nothing else leaves the main file."""

from __future__ import annotations

from pathlib import Path

from bench.benchmarks import _split_dump

HEAD = b"""/*M!999999\\- enable the sandbox mode */
-- MariaDB dump 10.19
--
/*!40101 SET NAMES utf8mb4 */;
/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;

--
-- Current Database: `app`
--

"""
ROWS = [b"INSERT INTO `t` VALUES (1),(2);\n",
        b"INSERT INTO `t` VALUES (3),\n(4);\n",  # MariaDB 11 writes a row a line
        b"INSERT INTO `t` VALUES (5);\n",
        b"INSERT INTO `u` VALUES (9);\n"]


def dump() -> tuple[bytes, bytes]:
    """The dump, and what must stay in the main file (all but the row statements)."""
    parts = [HEAD, b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `app`;\n\nUSE `app`;\n",
             b"DROP TABLE IF EXISTS `t`;\nCREATE TABLE `t` (id INT PRIMARY KEY);\n\n",
             b"LOCK TABLES `t` WRITE;\n/*!40000 ALTER TABLE `t` DISABLE KEYS */;\n",
             *ROWS[:3],
             b"/*!40000 ALTER TABLE `t` ENABLE KEYS */;\nUNLOCK TABLES;\n\n",
             b"USE `other`;\nLOCK TABLES `u` WRITE;\n", ROWS[3], b"UNLOCK TABLES;\n",
             b"INSERT INTO `log` VALUES ('not between the locks: runs in order');\n",
             b"/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n"]
    return b"".join(parts), b"".join(p for p in parts if p not in ROWS)


def test_rows_are_dealt_to_parts_and_everything_else_stays_in_order(tmp_path: Path) -> None:
    raw = tmp_path / "dump.raw"
    text, rest = dump()
    raw.write_bytes(text)
    main, parts = _split_dump(raw, 2)
    assert [p.read_bytes() for p in parts] == [
        HEAD + b"USE `app`;\n" + ROWS[0] + ROWS[2],
        HEAD + b"USE `app`;\n" + ROWS[1] + b"USE `other`;\n" + ROWS[3]]
    assert main.read_bytes() == rest
