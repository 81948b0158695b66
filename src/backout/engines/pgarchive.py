"""PostgreSQL artifacts, read as a stream: pg_dump's custom-format archive and the
bundle backout writes around it.

A backup of a PostgreSQL server is one file (one artifact per database entry, as for
every engine), holding several archives: the bundle. Decompressed it is::

    BACKOUT-PG 1\\n
    PART globals -\\n          pg_dumpall --globals-only (SQL text)
    <chunks>
    PART database <name>\\n    pg_dump --format=custom of one database
    <chunks>
    ...
    END\\n

where a part's chunks are an 8-byte big-endian length and that many bytes, and a
zero length ends the part; names are percent-encoded. The writer copies each tool's
output as it comes, so nothing is held whole in memory or on disk.

The checker walks each custom archive to its end without pg_restore: the header,
every entry of the table of contents, and every data block the TOC announces, each
terminated; a cut anywhere (inside a block or between two) fails. The row counts
recorded in the manifest are the rows of each table's COPY data in the archive
(newlines of the text format; a newline inside a value is escaped), so they
describe exactly what a restore produces. Data blocks compressed by pg_dump
itself (an operator's own ``pg_dump -Fc``) are read with zlib; lz4/zstd-compressed
blocks are walked but not counted.
"""

from __future__ import annotations

import struct
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from backout.storage.pipeline import IntegrityError

BUNDLE_MAGIC = b"BACKOUT-PG 1\n"
ARCHIVE_MAGIC = b"PGDMP"
GLOBALS_TRAILER = b"-- PostgreSQL database cluster dump complete"
COPY_END = b"\\.\n\n\n"  # what pg_dump writes after a table's COPY rows

BLK_DATA = 1
BLK_BLOBS = 3
OFFSET_NO_DATA = 3
FORMAT_CUSTOM = 1
# archive versions (major, minor): what changed that a reader must know
V_TABLEAM = (1, 14)  # PostgreSQL 12
V_COMPRESSION_ALGORITHM = (1, 15)  # PostgreSQL 16: one byte instead of a level
V_RELKIND = (1, 16)  # PostgreSQL 17
ALGORITHMS = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}


class _NeedMore(Exception):
    pass


class _Reader:
    """Reads pg_dump's primitive types from a buffer (raises _NeedMore at its end)."""

    def __init__(self, buf: bytes | bytearray, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.int_size = 4
        self.off_size = 8

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _NeedMore
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def int(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if sign else value

    def str(self) -> str | None:
        n = self.int()
        if n < 0:
            return None
        return self.take(n).decode("utf-8", errors="replace")


@dataclass
class TocEntry:
    dump_id: int
    desc: str
    tag: str
    namespace: str
    has_data: bool


@dataclass
class ArchiveHead:
    version: tuple[int, int, int]
    compression: str
    database: str
    server_version: str
    dump_version: str
    entries: list[TocEntry] = field(default_factory=list)


def parse_head(r: _Reader) -> ArchiveHead:
    """The header and the table of contents (raises _NeedMore while incomplete)."""
    if r.take(5) != ARCHIVE_MAGIC:
        raise IntegrityError("not a pg_dump custom-format archive (no PGDMP magic)")
    version = (r.byte(), r.byte(), r.byte())
    r.int_size, r.off_size = r.byte(), r.byte()
    if not 1 <= r.int_size <= 8 or not 1 <= r.off_size <= 16:
        raise IntegrityError("corrupt archive header (integer sizes)")
    if r.byte() != FORMAT_CUSTOM:
        raise IntegrityError("not a custom-format archive (use pg_dump --format=custom)")
    if version[:2] >= V_COMPRESSION_ALGORITHM:
        compression = ALGORITHMS.get(r.byte(), "unknown")
    else:
        compression = "none" if r.int() == 0 else "gzip"
    for _ in range(7):  # creation time
        r.int()
    head = ArchiveHead(version, compression, r.str() or "", r.str() or "", r.str() or "")
    count = r.int()
    if count < 0:
        raise IntegrityError("corrupt table of contents (negative entry count)")
    for _ in range(count):
        dump_id = r.int()
        r.int()  # had a data dumper
        r.str()  # table oid
        r.str()  # oid
        tag = r.str() or ""
        desc = r.str() or ""
        r.int()  # section
        r.str()  # definition
        r.str()  # drop statement
        r.str()  # copy statement
        namespace = r.str() or ""
        r.str()  # tablespace
        if version[:2] >= V_TABLEAM:
            r.str()
        if version[:2] >= V_RELKIND:
            r.int()
        r.str()  # owner
        r.str()  # "false": WITH OIDS
        while r.str() is not None:  # dependencies, a NULL ends them
            pass
        state = r.byte()
        r.take(r.off_size)
        head.entries.append(TocEntry(dump_id, desc, tag, namespace, state != OFFSET_NO_DATA))
    return head


# A data chunk's header: the sign byte and the length, for the archive's int size.
_HEADERS = {size: struct.Struct("<B" + code) for size, code in ((1, "B"), (2, "H"), (4, "I"),
                                                                  (8, "Q"))}


def _newline_bytes(value: int) -> int:
    """How many bytes of ``value`` (little-endian) are 10, the newline byte."""
    count = 0
    while value:
        count += (value & 0xFF) == 10
        value >>= 8
    return count


class CustomArchiveChecker:
    """A pg_dump custom-format archive, read to its end: TOC, data blocks, rows."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.buf = bytearray()
        self.head: ArchiveHead | None = None
        self.state = "block"
        self.remaining = 0
        self.block: TocEntry | None = None
        self.in_blobs = False
        self.seen: set[int] = set()
        self.rows: dict[str, int] = {}
        self.large_objects = 0
        self.tail = b""
        self.inflate: Any = None
        self.uncounted: list[str] = []

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        if self.head is None:
            r = _Reader(self.buf)
            try:
                self.head = parse_head(r)
            except _NeedMore:
                return
            except IntegrityError as exc:
                raise IntegrityError(f"{self.what}: {exc.message}") from None
            self.int_size = r.int_size
            self.by_id = {e.dump_id: e for e in self.head.entries}
            for e in self.head.entries:
                if e.desc == "TABLE DATA":
                    self.rows[self._name(e)] = 0
            del self.buf[:r.pos]
        self._blocks()

    @staticmethod
    def _name(e: TocEntry) -> str:
        return f"{e.namespace}.{e.tag}" if e.namespace else e.tag

    def _int(self, pos: int) -> tuple[int, int] | None:
        end = pos + 1 + self.int_size
        if end > len(self.buf):
            return None
        value = int.from_bytes(self.buf[pos + 1:end], "little")
        return (-value if self.buf[pos] else value), end

    def _blocks(self) -> None:
        pos = 0
        buf = self.buf
        while True:
            if self.state == "chunk":
                n = min(self.remaining, len(buf) - pos)
                if n == 0:
                    break
                self._data(bytes(buf[pos:pos + n]))
                pos += n
                self.remaining -= n
                if self.remaining == 0:
                    self.state = "length"
                continue
            if self.state == "block":
                if pos + 1 > len(buf):
                    break
                kind = buf[pos]
                got = self._int(pos + 1)
                if got is None:
                    break
                dump_id, pos = got
                self._start_block(kind, dump_id)
                continue
            if self.state == "length" and self.inflate is None and not self.in_blobs:
                pos = self._whole_chunks(pos)
                if self.state != "length":
                    continue
            got = self._int(pos)
            if got is None:
                break
            value, pos = got
            if self.state == "length":
                if value < 0:
                    raise IntegrityError(f"{self.what}: corrupt data block (negative length)")
                if value == 0:
                    self._end_data()
                else:
                    self.state, self.remaining = "chunk", value
            elif self.state == "blob":  # a large object's oid, or 0: the end of the block
                if value == 0:
                    self.state, self.block, self.in_blobs = "block", None, False
                else:
                    self.large_objects += 1
                    self.state = "length"
        del buf[:pos]

    def _whole_chunks(self, pos: int) -> int:
        """The hot path of an uncompressed block (one chunk per COPY row): every chunk
        whole in the buffer is walked in place, without a copy; returns where the
        first incomplete one (or the block's end marker) starts. The rows are counted
        in one pass over the whole span, less the newline bytes of its chunk headers
        (a header is a 0 sign byte and the length, little-endian: a length byte of 10
        reads as a newline), so the per-chunk work is one unpack and a few compares."""
        buf, size, width = self.buf, len(self.buf), 1 + self.int_size
        header = _HEADERS.get(self.int_size)
        if header is None:  # an int size no struct code has: the generic path
            return pos
        unpack = header.unpack_from
        table = self.block is not None and self.block.desc == "TABLE DATA"
        keep = len(COPY_END)
        start = pos
        header_newlines = 0
        tail_end = -1  # the data of the last chunk seen ends here (when it is long enough)
        while pos + width <= size:
            sign, length = unpack(buf, pos)
            end = pos + width + length
            if sign or length == 0 or end > size:
                break  # negative: the generic path reports it; 0: the block's end
            if table:
                if length < 256:
                    header_newlines += length == 10
                else:
                    header_newlines += _newline_bytes(length)
                if length >= keep:
                    tail_end = end
                else:
                    if tail_end >= 0:
                        self.tail = bytes(buf[tail_end - keep:tail_end])
                        tail_end = -1
                    self.tail = (self.tail + bytes(buf[pos + width:end]))[-keep:]
            pos = end
        if table:
            assert self.block is not None
            self.rows[self._name(self.block)] += buf.count(b"\n", start, pos) - header_newlines
            if tail_end >= 0:
                self.tail = bytes(buf[tail_end - keep:tail_end])
        return pos

    def _start_block(self, kind: int, dump_id: int) -> None:
        entry = self.by_id.get(dump_id)
        if entry is None or kind not in (BLK_DATA, BLK_BLOBS) or dump_id in self.seen:
            raise IntegrityError(f"{self.what}: corrupt archive: unexpected data block "
                                 f"(type {kind}, entry {dump_id})")
        self.seen.add(dump_id)
        self.block = entry
        self.in_blobs = kind == BLK_BLOBS
        self.state = "blob" if self.in_blobs else "length"
        self.tail = b""
        self.inflate = None
        assert self.head is not None
        if not self.in_blobs and self.head.compression == "gzip":
            self.inflate = zlib.decompressobj()

    def _data(self, data: bytes) -> None:
        if self.in_blobs or self.block is None or self.block.desc != "TABLE DATA":
            return
        if self.inflate is not None:
            try:
                data = self.inflate.decompress(data)
            except zlib.error as exc:
                raise IntegrityError(f"{self.what}: corrupt compressed data of "
                                     f"{self._name(self.block)}: {exc}") from None
        elif self.head is not None and self.head.compression != "none":
            return
        self.rows[self._name(self.block)] += data.count(b"\n")
        self.tail = (self.tail + data)[-len(COPY_END):]

    def _end_data(self) -> None:
        if self.in_blobs:
            self.state = "blob"
            return
        block = self.block
        assert block is not None and self.head is not None
        if block.desc == "TABLE DATA":
            name = self._name(block)
            if self.head.compression not in ("none", "gzip"):
                self.uncounted.append(name)
            elif self.tail != COPY_END:
                raise IntegrityError(f"{self.what}: the data of {name} does not end as "
                                     "pg_dump ends a table (truncated or corrupt)")
            else:
                self.rows[name] -= COPY_END.count(b"\n")
        self.state, self.block = "block", None

    def finish(self) -> dict[str, Any]:
        if self.head is None:
            raise IntegrityError(f"{self.what}: the archive ends inside its table of contents "
                                 "(empty or truncated)")
        if self.state != "block" or self.buf:
            raise IntegrityError(f"{self.what}: the archive ends inside a data block (truncated)")
        missing = [self._name(e) for e in self.head.entries if e.has_data and e.dump_id not in self.seen]
        if missing:
            raise IntegrityError(f"{self.what}: the archive ends before the data of "
                                 f"{', '.join(missing[:5])} (truncated)")
        tables = {k: v for k, v in self.rows.items() if k not in self.uncounted}
        return {"database": self.head.database, "tables": tables,
                "uncounted": self.uncounted, "large_objects": self.large_objects,
                "toc_entries": len(self.head.entries),
                "archive_version": ".".join(map(str, self.head.version)),
                "server_version": self.head.server_version,
                "dump_version": self.head.dump_version}


# --- the bundle

def part_header(kind: str, name: str) -> bytes:
    return f"PART {kind} {urllib.parse.quote(name, safe='') or '-'}\n".encode()


def chunk(data: bytes | memoryview) -> bytes:
    return struct.pack(">Q", len(data)) + data


END_PART = struct.pack(">Q", 0)
END = b"END\n"


class BundleReader:
    """Splits a bundle stream into its parts: ``feed`` returns events
    ``("start", kind, name)``, ``("data", kind, bytes)``, ``("end", kind, name)``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.buf = bytearray()
        self.state = "magic"
        self.part: tuple[str, str] | None = None
        self.remaining = 0
        self.parts: list[tuple[str, str]] = []

    def feed(self, data: bytes) -> Iterator[tuple[str, str, Any]]:
        self.buf += data
        pos = 0
        buf = self.buf
        while True:
            if self.state == "chunk":
                n = min(self.remaining, len(buf) - pos)
                if n == 0:
                    break
                assert self.part is not None
                yield "data", self.part[0], bytes(buf[pos:pos + n])
                pos += n
                self.remaining -= n
                if self.remaining == 0:
                    self.state = "length"
            elif self.state == "length":
                if pos + 8 > len(buf):
                    break
                (n,) = struct.unpack_from(">Q", buf, pos)
                pos += 8
                assert self.part is not None
                if n == 0:
                    yield "end", self.part[0], self.part[1]
                    self.parts.append(self.part)
                    self.state, self.part = "line", None
                else:
                    self.state, self.remaining = "chunk", n
            else:
                nl = buf.find(b"\n", pos, pos + 4096)
                if nl < 0:
                    if len(buf) - pos >= 4096:
                        raise IntegrityError(f"{self.what}: not a backout PostgreSQL bundle")
                    break
                line = bytes(buf[pos:nl + 1])
                pos = nl + 1
                if self.state == "magic":
                    if line != BUNDLE_MAGIC:
                        raise IntegrityError(f"{self.what}: not a backout PostgreSQL bundle "
                                             "(no BACKOUT-PG magic)")
                    self.state = "line"
                elif line == END:
                    self.state = "end"
                elif self.state == "end":
                    raise IntegrityError(f"{self.what}: data after the end of the bundle")
                elif line.startswith(b"PART ") and len(line.split()) == 3:
                    _, kind, name = line.decode().split()
                    self.part = (kind, "" if name == "-" else urllib.parse.unquote(name))
                    self.state = "length"
                    yield "start", kind, self.part[1]
                else:
                    raise IntegrityError(f"{self.what}: corrupt bundle (bad part header)")
        del buf[:pos]

    def finish(self) -> None:
        if self.state != "end" or self.buf:
            raise IntegrityError(f"{self.what}: the bundle has no end marker (truncated, "
                                 "or the dump failed)")


class BundleChecker:
    """The whole backup of one server: every part whole, each archive read to its end."""

    def __init__(self, expected_databases: list[str], what: str) -> None:
        self.expected = expected_databases
        self.what = what
        self.reader = BundleReader(what)
        self.archive: CustomArchiveChecker | None = None
        self.globals_tail = b""
        self.globals_roles = 0
        self.has_globals = False
        self.databases: dict[str, dict[str, Any]] = {}
        self.current = ""

    def feed(self, data: bytes) -> None:
        for event, kind, value in self.reader.feed(data):
            if event == "start":
                if kind == "database":
                    self.current = value
                    self.archive = CustomArchiveChecker(f"{self.what} ({value})")
                elif kind == "globals":
                    self.has_globals = True
                else:
                    raise IntegrityError(f"{self.what}: unknown part {kind!r} in the bundle")
            elif event == "data":
                if kind == "database":
                    assert self.archive is not None
                    self.archive.feed(value)
                else:
                    self.globals_roles += value.count(b"\nCREATE ROLE ")
                    self.globals_tail = (self.globals_tail + value)[-200:]
            elif kind == "database":
                assert self.archive is not None
                result = self.archive.finish()
                self.databases[self.current] = {
                    "tables": result["tables"], "large_objects": result["large_objects"],
                    "toc_entries": result["toc_entries"],
                    "archive_version": result["archive_version"]}
                self.server_version = result["server_version"]
                self.archive = None
            elif GLOBALS_TRAILER not in self.globals_tail:
                raise IntegrityError(f"{self.what}: the roles dump (pg_dumpall --globals-only) "
                                     "has no completion trailer")

    def finish(self) -> dict[str, Any]:
        self.reader.finish()
        missing = [d for d in self.expected if d not in self.databases]
        if missing:
            raise IntegrityError(f"{self.what}: database(s) missing from the backup: "
                                 f"{', '.join(missing)}")
        return {"databases": self.databases, "globals": self.has_globals,
                "roles": self.globals_roles,
                "server_version": getattr(self, "server_version", None)}


class PlainArchiveChecker:
    """An operator's own ``pg_dump -Fc`` file, shaped like a bundle's result."""

    def __init__(self, what: str) -> None:
        self.archive = CustomArchiveChecker(what)

    def feed(self, data: bytes) -> None:
        self.archive.feed(data)

    def finish(self) -> dict[str, Any]:
        result = self.archive.finish()
        return {"databases": {result["database"]: {
                    "tables": result["tables"], "large_objects": result["large_objects"],
                    "toc_entries": result["toc_entries"],
                    "archive_version": result["archive_version"]}},
                "globals": False, "roles": 0, "server_version": result["server_version"]}
