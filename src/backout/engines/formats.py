"""Format checks run on the decompressed stream of each artifact.

Each checker proves the artifact is whole (not just that a checksum matches) and
derives the counts recorded in the manifest from the artifact itself, so the
counts describe exactly the data a restore will produce.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from backout.errors import IntegrityError
from backout.storage.crc64 import CRC64

_STRINGS = re.compile(rb"'(?:[^'\\]|\\.)*'", re.S)
# The same strings within one line: blanking a block of lines with it gives exactly
# what blanking each line with _STRINGS gives (dumps escape newlines in strings).
# Written as an unrolled loop: six times faster in Python's re than the alternation.
_LINE_STRINGS = re.compile(rb"'[^'\\\n]*(?:\\[^\n][^'\\\n]*)*'")
_SEMICOLON_AT_END = re.compile(rb";[ \t\r\x0b\x0c]*$", re.M)
_INSERT_LINE = re.compile(rb"^INSERT INTO ", re.M)
_USE = re.compile(rb"^USE `((?:[^`]|``)+)`;")
_CREATE = re.compile(rb"^CREATE TABLE `((?:[^`]|``)+)`")
_INSERT = re.compile(rb"^INSERT INTO `((?:[^`]|``)+)` VALUES ?")
_MASTER = re.compile(rb"MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=(\d+)")
_GTID = re.compile(rb"gtid_slave_pos='([^']*)'")
_SERVER = re.compile(rb"^-- Server version\s+(.+)$")


# The dump tool's header comments (server version, binlog position) come first: lines
# are counted only as far as this (`lines` is exact below it, a lower bound above).
HEADER_LINES = 200


class MySQLDumpChecker:
    """A mysqldump/mariadb-dump SQL stream: trailer, databases, rows per table."""

    def __init__(self, expected_databases: list[str], what: str) -> None:
        self.expected = expected_databases
        self.what = what
        self.rest = b""
        self.db: str | None = None
        self.tables: dict[str, dict[str, int]] = {}
        self.last_line = b""
        self.binlog: dict[str, Any] | None = None
        self.server: str | None = None
        self.lines = 0
        self.insert_table: str | None = None

    def _rows(self, text: bytes) -> None:
        """Count row tuples of an INSERT, on one line (MySQL) or one per line (MariaDB).

        Dumps escape newlines inside strings, and values hold parentheses only
        inside strings; with strings blanked, each "(" opens one row.
        """
        strings = _STRINGS if self.per_line else _LINE_STRINGS  # the same on one line
        body = strings.sub(b"''", text) if b"'" in text else text
        assert self.db is not None and self.insert_table is not None
        self.tables[self.db][self.insert_table] += body.count(b"(")
        if body.rstrip().endswith(b";"):
            self.insert_table = None

    def feed(self, chunk: bytes) -> None:
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self.rest += chunk
            return
        if self.per_line:
            data = self.rest + chunk
            for line in data[:len(self.rest) + cut].split(b"\n"):
                self._line(line)
        else:
            # The line begun in the previous chunk is completed apart, and the chunk is
            # read in place: `rest + chunk` copied every chunk (a fifth of the checker).
            start = 0
            if self.rest:
                start = chunk.index(b"\n") + 1
                head = self.rest + chunk[:start]
                self._block(head, len(head))
            self._block(chunk, cut + 1, start)
        self.rest = chunk[cut + 1:]

    # A dump is mostly rows: 526,315 of its 526,676 lines in the bench's (MariaDB writes
    # a row per line). Those are counted a block at a time (one regex pass, one count,
    # in C: 14 MB/s line by line was the backup's bottleneck); every other line goes
    # through _line. `per_line` = True is the line-by-line oracle the tests compare with.
    per_line = False

    def _block(self, data: bytes, n: int, start: int = 0) -> None:
        """The whole lines ``data[start:n]`` (ending with a newline, ``start`` just
        after one), as _line would take them. Read in place, by bounds: a copy of the
        block per step was a tenth of the checker's time."""
        pos = start
        while pos < n:
            if self.insert_table is not None:
                table = self.insert_table
                end = self._insert_end(data, pos, n)
                self._count(data, pos, end, table)
                pos = end
                continue
            found = _INSERT_LINE.search(data, pos, n)
            stop = n if found is None else found.start()
            for line in data[pos:stop].split(b"\n")[:-1]:
                self._line(line)
            if found is None:
                break
            eol = data.index(b"\n", stop, n)
            self._line(data[stop:eol])
            pos = eol + 1
        end = n  # the last line that is not blank (bytes.strip's whitespace)
        while end > start and data[end - 1] in b" \t\n\r\x0b\x0c":
            end -= 1
        if end > start:
            self.last_line = data[(data.rfind(b"\n", start, end) + 1) or start:end]

    def _insert_end(self, data: bytes, pos: int, n: int) -> int:
        """Where the INSERT under way ends: after its first line ending with ';' (as
        _rows decides on the line with its strings blanked, which ends the same: a
        blanked string ends with a quote, so a final ';' is never inside one); the
        block's end ``n`` when the statement goes on."""
        # Most blocks hold no ';' at all (the statement goes on): found by memchr in C,
        # at many times the regex's speed, which runs from the first ';' only.
        first = data.find(b";", pos, n)
        m = None if first < 0 else _SEMICOLON_AT_END.search(data, first, n)
        if m is None:
            return n
        self.insert_table = None
        return m.end() + 1

    def _count(self, data: bytes, pos: int, end: int, table: str) -> None:
        """The rows of the whole lines ``data[pos:end]`` of an INSERT (and its lines)."""
        assert self.db is not None
        if self.lines < HEADER_LINES:  # the only use of the count: a pass of C saved
            self.lines += data.count(b"\n", pos, end)
        # MariaDB writes a row per line, each line beginning with "(". A line's first
        # byte is never inside a string (dumps escape newlines), so when every "(" of
        # these lines begins one, none is inside a string: the rows are the "(", what
        # blanking the strings and counting "(" gives, from two counts in C. Blanking
        # (the other case: a "(" in a value, MySQL's one-line INSERTs) was 0.6 of the
        # checker's 0.9 CPU s per 96 MB of dump, on cores the dump itself keeps busy.
        opened = data.count(b"(", pos, end)
        if data.startswith(b"(", pos, end) + data.count(b"\n(", pos, end) == opened:
            self.tables[self.db][table] += opened
            return
        rows = data[pos:end]
        body = _LINE_STRINGS.sub(b"''", rows) if b"'" in rows else rows
        self.tables[self.db][table] += body.count(b"(")

    def _line(self, line: bytes) -> None:
        self.lines += 1
        if line.strip():
            self.last_line = line
        if self.insert_table is not None:
            self._rows(line)
            return
        if line.startswith(b"INSERT INTO "):
            m = _INSERT.match(line)
            if m and self.db is not None:
                self.insert_table = m.group(1).decode().replace("``", "`")
                self.tables[self.db].setdefault(self.insert_table, 0)
                self._rows(line[m.end():])
            return
        if line.startswith(b"USE "):
            m = _USE.match(line)
            if m:
                self.db = m.group(1).decode().replace("``", "`")
                self.tables.setdefault(self.db, {})
        elif line.startswith(b"CREATE TABLE ") and self.db is not None:
            m = _CREATE.match(line)
            if m:
                self.tables[self.db].setdefault(m.group(1).decode().replace("``", "`"), 0)
        elif line.startswith(b"-- ") and self.lines < HEADER_LINES:
            if (m := _MASTER.search(line)) is not None:
                self.binlog = {"file": m.group(1).decode(), "position": int(m.group(2))}
            elif (m := _SERVER.match(line)) is not None:
                self.server = m.group(1).decode().strip()
            if (g := _GTID.search(line)) is not None and self.binlog is not None:
                self.binlog["gtid"] = g.group(1).decode()

    def finish(self) -> dict[str, Any]:
        if self.rest:
            self._line(self.rest)
            self.rest = b""
        if not self.last_line.startswith(b"-- Dump completed"):
            raise IntegrityError(f"{self.what}: the dump has no '-- Dump completed' trailer "
                                 "(truncated or the dump tool failed)")
        missing = [d for d in self.expected if d not in self.tables]
        if missing:
            raise IntegrityError(f"{self.what}: database(s) missing from the dump: {', '.join(missing)}")
        return {"databases": {db: {"tables": tables} for db, tables in self.tables.items()},
                "binlog": self.binlog, "server_version": self.server}


RDB_EOF = 0xFF
RDB_SELECTDB = 0xFE
RDB_RESIZEDB = 0xFB
RDB_AUX = 0xFA


class RDBChecker:
    """A Redis RDB file: magic, version, the EOF opcode and the CRC-64 after it.

    The checksum (RDB version 5+, 8 little-endian bytes after EOF, 0 = disabled) is
    computed over the whole stream as it passes, so a flipped byte anywhere fails.
    Key counts come from the RESIZEDB opcodes that follow each SELECTDB (Redis
    writes the exact size of the keyspace at the snapshot). The first database's
    header is parsed from the head of the file; later databases are found by a
    scan for their SELECTDB+RESIZEDB signature only when they precede no data.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.head = b""
        self.tail = b""  # the last 9 bytes seen: EOF opcode + checksum
        self.size = 0
        self.crc = CRC64()  # over every byte except the last 8

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < 65536:
            self.head += chunk[: 65536 - len(self.head)]
        pending = self.tail[-8:] + chunk
        self.crc.update(pending[:-8])
        self.tail = (self.tail + chunk)[-9:]
        self.size += len(chunk)

    def finish(self) -> dict[str, Any]:
        if not self.head.startswith(b"REDIS") or not self.head[5:9].isdigit():
            raise IntegrityError(f"{self.what}: not an RDB file (no REDIS magic)")
        version = int(self.head[5:9])
        if len(self.tail) < 9 or self.tail[0] != RDB_EOF:
            raise IntegrityError(f"{self.what}: RDB is truncated (no EOF marker at the end)")
        stored = int.from_bytes(self.tail[1:], "little")
        checksum = "disabled"
        if version >= 5 and stored != 0:
            computed = self.crc.value()
            if computed != stored:
                raise IntegrityError(f"{self.what}: RDB checksum mismatch (the file says "
                                     f"{stored:016x}, its contents give {computed:016x}): "
                                     "corrupt")
            checksum = "ok"
        return {"rdb_version": version, "keys": parse_rdb_keycounts(self.head),
                "bytes": self.size, "checksum": checksum}


def _length(buf: bytes, i: int) -> tuple[int | None, int]:
    """RDB length encoding; (None, i) for the special string encodings."""
    first = buf[i]
    kind = first >> 6
    if kind == 0:
        return first & 0x3F, i + 1
    if kind == 1:
        return ((first & 0x3F) << 8) | buf[i + 1], i + 2
    if kind == 2:
        if first == 0x80:
            return struct.unpack(">I", buf[i + 1:i + 5])[0], i + 5
        if first == 0x81:
            return struct.unpack(">Q", buf[i + 1:i + 9])[0], i + 9
    return None, i


def _skip_string(buf: bytes, i: int) -> int:
    first = buf[i]
    if first >> 6 == 3:
        enc = first & 0x3F
        if enc in (0, 1, 2):
            return i + 1 + (1, 2, 4)[enc]
        if enc == 3:  # LZF: compressed len, uncompressed len, data
            clen, j = _length(buf, i + 1)
            _ulen, j = _length(buf, j)
            return j + int(clen or 0)
        raise IntegrityError(f"unknown RDB string encoding {enc}")
    n, j = _length(buf, i)
    return j + int(n or 0)


def parse_rdb_keycounts(head: bytes) -> dict[str, int]:
    """``{"db0": N}`` from the SELECTDB/RESIZEDB header after the AUX fields."""
    i = 9
    counts: dict[str, int] = {}
    try:
        while i < len(head):
            op = head[i]
            if op == RDB_AUX:
                i = _skip_string(head, i + 1)
                i = _skip_string(head, i)
            elif op == RDB_SELECTDB:
                db, i = _length(head, i + 1)
                if i < len(head) and head[i] == RDB_RESIZEDB:
                    size, i = _length(head, i + 1)
                    _exp, i = _length(head, i)
                    counts[f"db{db}"] = int(size or 0)
                break
            elif op == 0xF5 or op == 0xF7:  # FUNCTION2 / MODULE_AUX: stop, counts unknown
                break
            else:
                break  # EOF (empty keyspace) or data
    except (IndexError, struct.error):
        pass
    return counts


class TarStream:
    """A tar archive read as a stream: every header's checksum is verified, GNU long
    names (``L``) and pax ``path``/``size`` records are applied, and the archive must
    end with its zero blocks. Subclasses see members through ``_begin``,
    ``_content`` and ``_end_member``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.buf = bytearray()
        self.member: str | None = None  # the member being read ("" = skipped content)
        self.remaining = 0
        self.pad = 0
        self.ended = False
        self.entries = 0
        self._meta: bytes | None = None  # typeflag of an L/x record being read
        self._meta_buf = bytearray()
        self._next: dict[str, str] = {}  # overrides for the next header (long name, pax)

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while True:
            if self.member is not None:
                if self.remaining:
                    take = min(self.remaining, len(self.buf))
                    if not take:
                        return
                    self._member_data(bytes(self.buf[:take]))
                    del self.buf[:take]
                    self.remaining -= take
                    if self.remaining:
                        return
                    self._member_end()
                if len(self.buf) < self.pad:
                    return
                del self.buf[: self.pad]
                self.member = None
            if self.ended:
                self.buf.clear()
                return
            if len(self.buf) < 512:
                return
            header = bytes(self.buf[:512])
            del self.buf[:512]
            if header == b"\0" * 512:
                self.ended = True
                continue
            self._header(header)

    def _header(self, header: bytes) -> None:
        stored = header[148:156].rstrip(b"\0 ")
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        try:
            ok = int(stored or b"-1", 8) == computed
        except ValueError:
            ok = False
        if not ok:
            raise IntegrityError(f"{self.what}: corrupt tar header after {self.entries} "
                                 "entries (bad header checksum)")
        name = header[:100].split(b"\0", 1)[0].decode(errors="replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode(errors="replace")
        if prefix and header[257:262] == b"ustar" and header[257:265] != b"ustar  \0":
            name = f"{prefix}/{name}"
        size = _tar_number(header[124:136])
        typeflag = header[156:157]
        self.remaining = size
        self.pad = (512 - size % 512) % 512
        if typeflag in (b"L", b"x", b"g"):
            self._meta = typeflag
            self._meta_buf.clear()
            self.member = ""
        else:
            name = self._next.pop("path", name)
            if "size" in self._next:
                self.remaining = int(self._next.pop("size"))
                self.pad = (512 - self.remaining % 512) % 512
            self._next.clear()
            self.entries += 1
            self._meta = None
            self.member = name
            self._begin(name, typeflag, self.remaining)
        if self.remaining == 0:
            self._member_end()

    def _member_data(self, data: bytes) -> None:
        if self._meta is not None:
            self._meta_buf += data
        else:
            self._content(data)

    def _member_end(self) -> None:
        if self._meta == b"L":
            self._next["path"] = bytes(self._meta_buf).split(b"\0", 1)[0].decode(errors="replace")
        elif self._meta == b"x":
            for line in bytes(self._meta_buf).decode(errors="replace").splitlines():
                _len, _, record = line.partition(" ")
                key, _, value = record.partition("=")
                if key in ("path", "size"):
                    self._next[key] = value
        if self._meta is None:
            self._end_member()
        self._meta = None

    def _begin(self, name: str, typeflag: bytes, size: int) -> None:
        """A member starts (hook)."""

    def _content(self, data: bytes) -> None:
        """Some of the current member's content (hook)."""

    def _end_member(self) -> None:
        """The current member is complete (hook)."""

    def _require_end(self) -> None:
        if not self.ended or self.member is not None:
            raise IntegrityError(f"{self.what}: the archive is truncated (no end-of-archive marker)")


def _tar_number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text or b"0", 8)


class VolumeTarChecker(TarStream):
    """A tar of a Docker volume: lists cleanly to its end; counts entries and bytes."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "other": 0, "bytes": 0}

    def _begin(self, name: str, typeflag: bytes, size: int) -> None:
        kind = {b"0": "files", b"\0": "files", b"7": "files", b"5": "dirs",
                b"2": "symlinks"}.get(typeflag, "other")
        self.counts[kind] += 1
        if kind == "files":
            self.counts["bytes"] += size

    def finish(self) -> dict[str, Any]:
        self._require_end()
        if self.entries == 0:
            raise IntegrityError(f"{self.what}: the archive lists nothing (not even the "
                                 "volume's root directory)")
        return dict(self.counts)


class TarBsonChecker(TarStream):
    """Our MongoDB artifact: a tar of mongodump's directory layout
    (``dump/<db>/<coll>.bson`` + ``.metadata.json``). Counts BSON documents."""

    def __init__(self, expected_databases: list[str], what: str) -> None:
        super().__init__(what)
        self.expected = expected_databases
        self.docs: dict[str, dict[str, int]] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.bson_rest = bytearray()
        self.json_buf = bytearray()
        self.current = ""  # the regular file being read, "" for anything else

    def _begin(self, name: str, typeflag: bytes, size: int) -> None:
        self.current = name if typeflag in (b"0", b"\0") else ""

    def _content(self, data: bytes) -> None:
        if not self.current:
            return
        if self.current.endswith(".bson"):
            self.bson_rest += data
            self._count_docs()
        elif self.current.endswith(".metadata.json"):
            self.json_buf += data

    def _count_docs(self) -> None:
        db, coll = self._ns(".bson")
        count = 0
        pos = 0
        while len(self.bson_rest) - pos >= 4:
            n = int.from_bytes(self.bson_rest[pos:pos + 4], "little")
            if n < 5:
                raise IntegrityError(f"{self.what}: corrupt BSON in {self.current}")
            if len(self.bson_rest) - pos < n:
                break
            if self.bson_rest[pos + n - 1] != 0:
                raise IntegrityError(f"{self.what}: corrupt BSON in {self.current}")
            pos += n
            count += 1
        del self.bson_rest[:pos]
        d = self.docs.setdefault(db, {})
        d[coll] = d.get(coll, 0) + count

    def _end_member(self) -> None:
        if self.current.endswith(".bson"):
            db, coll = self._ns(".bson")
            self.docs.setdefault(db, {}).setdefault(coll, 0)
            if self.bson_rest:
                raise IntegrityError(f"{self.what}: truncated BSON document in {self.current}")
        elif self.current.endswith(".metadata.json"):
            db, coll = self._ns(".metadata.json")
            try:
                self.meta.setdefault(db, {})[coll] = json.loads(bytes(self.json_buf))
            except ValueError as exc:
                raise IntegrityError(f"{self.what}: bad metadata in {self.current}") from exc
            self.json_buf.clear()
        self.current = ""

    def _ns(self, suffix: str) -> tuple[str, str]:
        parts = self.current.split("/")
        return parts[-2], parts[-1][: -len(suffix)]

    def finish(self) -> dict[str, Any]:
        self._require_end()
        missing = [d for d in self.expected if d not in self.docs]
        if missing:
            raise IntegrityError(f"{self.what}: database(s) missing from the dump: {', '.join(missing)}")
        for db, colls in self.docs.items():
            for coll in colls:
                if coll not in self.meta.get(db, {}):
                    raise IntegrityError(f"{self.what}: {db}.{coll} has no metadata.json")
        return {"databases": {db: {"collections": c} for db, c in self.docs.items()}}
