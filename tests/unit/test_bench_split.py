"""The bench's bare parallel-load floor splits a dump the way a person would
(bench/benchmarks.py `_split_dump`): every row lands in exactly one part, each part
starts with the dump's head, and nothing else leaves the main file."""

from __future__ import annotations

from pathlib import Path

from bench.benchmarks import _split_dump

DUMP = b"""/*M!999999\\- enable the sandbox mode */
-- MariaDB dump 10.19
--
/*!40101 SET NAMES utf8mb4 */;
/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;

--
-- Current Database: `app`
--

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `app`;

USE `app`;
DROP TABLE IF EXISTS `t`;
CREATE TABLE `t` (id INT PRIMARY KEY);

LOCK TABLES `t` WRITE;
/*!40000 ALTER TABLE `t` DISABLE KEYS */;
INSERT INTO `t` VALUES (1),(2);
INSERT INTO `t` VALUES (3),(4);
INSERT INTO `t` VALUES (5);
/*!40000 ALTER TABLE `t` ENABLE KEYS */;
UNLOCK TABLES;

USE `other`;
LOCK TABLES `u` WRITE;
INSERT INTO `u` VALUES (9);
UNLOCK TABLES;
INSERT INTO `log` VALUES ('not a row of a dumped table: runs in order');
/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
"""


def test_rows_are_dealt_to_parts_and_everything_else_stays_in_order(tmp_path: Path) -> None:
    raw = tmp_path / "dump.raw"
    raw.write_bytes(DUMP)
    main, parts = _split_dump(raw, 2)
    lines = DUMP.splitlines(keepends=True)
    # the head: every line before the first statement of substance (comments and all)
    head = b"".join(lines[:next(i for i, ln in enumerate(lines) if ln.startswith(b"CREATE"))])
    rows = [ln for ln in lines if ln.startswith((b"INSERT INTO `t`", b"INSERT INTO `u`"))]
    texts = [p.read_bytes() for p in parts]
    assert all(t.startswith(head) for t in texts)
    assert texts[0][len(head):] == b"USE `app`;\n" + rows[0] + rows[2]
    assert texts[1][len(head):] == b"USE `app`;\n" + rows[1] + b"USE `other`;\n" + rows[3]
    assert main.read_bytes() == b"".join(ln for ln in lines if ln not in rows)
