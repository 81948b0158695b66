"""Bench 3's proven bare pipe: stdin to stdout unchanged, a MiB at a time, through
the engine's own checker (format, trailer, row or key counts) and a sha256, close to
how backout's pipeline proves a backup while it is written (backout hashes the
compressed file, this the raw stream; backout's checker runs in a process between the
dump and zstd too, backout.storage.proofchild).

    <dump> | python bench/proof.py mysql backout_app | zstd -3 -T0 > file && sync file

is the bare pipe plus the proof backout keeps of every backup: the floor of a backup
that is proven, measured in the same run as the bare pipe and backout."""

from __future__ import annotations

import hashlib
import sys

from backout import engines


def main(argv: list[str]) -> int:
    kind, databases = argv[0], argv[1:]
    # pg_dump's own archive (the bare pipe's), not backout's bundle of roles + archives
    section: dict[str, object] = ({"plain_archive": True} if kind == "postgresql" else
                                  {"databases": {d: {} for d in databases}})
    checker = engines.get(kind).checker(section, "bench proof")
    digest = hashlib.sha256()
    out = sys.stdout.buffer
    while chunk := sys.stdin.buffer.read(1 << 20):
        checker.feed(chunk)
        digest.update(chunk)
        out.write(chunk)
    out.flush()
    checker.finish()  # raises on a dump that is not whole
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
