"""The bare driver-based MongoDB dump and restore the bench compares backout with.

    python bench/rawmongo.py dump PORT DB > stream      # raw BSON of every collection
    python bench/rawmongo.py restore PORT DB < stream   # drop + insert_many per collection

The stream is the collections' raw BSON documents, each collection introduced by a
marker document {MARKER: name}. Only 127.0.0.1; no authentication (the test stack's
MongoDB stand-in has none).
"""

from __future__ import annotations

import sys
from typing import IO

import bson
import pymongo
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

MARKER = "__rawmongo_collection__"
RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)


def client(port: int) -> pymongo.MongoClient[RawBSONDocument]:
    return pymongo.MongoClient("127.0.0.1", port, directConnection=True,
                               serverSelectionTimeoutMS=10000, document_class=RawBSONDocument)


def dump(port: int, database: str, out: IO[bytes]) -> int:
    db = client(port)[database]
    count = 0
    for name in sorted(db.list_collection_names()):
        out.write(bson.encode({MARKER: name}))
        for doc in db.get_collection(name, codec_options=RAW).find({}, batch_size=1000):
            out.write(doc.raw)
            count += 1
    out.flush()
    return count


def restore(port: int, database: str, stream: IO[bytes]) -> int:
    db = client(port)[database]
    count = 0
    batch: list[RawBSONDocument] = []
    coll: pymongo.collection.Collection[RawBSONDocument] | None = None

    def flush() -> None:
        if coll is not None and batch:
            coll.insert_many(batch, ordered=True)
            batch.clear()

    for doc in bson.decode_file_iter(stream, codec_options=RAW):
        if MARKER in doc:
            flush()
            coll = db.get_collection(str(doc[MARKER]), codec_options=RAW)
            coll.drop()
            continue
        batch.append(doc)
        count += 1
        if len(batch) >= 1000:
            flush()
    flush()
    return count


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("dump", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    port, database = int(argv[1]), argv[2]
    if argv[0] == "dump":
        n = dump(port, database, sys.stdout.buffer)
    else:
        n = restore(port, database, sys.stdin.buffer)
    print(f"{argv[0]}: {n} documents", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
