"""The format check of a backup in a process of its own, between the dump and zstd.

    <producer> | python -P -m backout.storage.proofchild FD | zstd -3 …

Standard input to standard output unchanged, a CHUNK at a time, each through the
checker; the checker comes pickled in the file open at descriptor FD, and its verdict
goes back into that file (emptied first) once the stream has ended: the pickled dict
``{"raw": bytes passed, "checks": finish()'s counts or None, "error": the checker's
objection or failure or None, "failed_in": "feed" or "finish", "flowing": False when
zstd stopped reading}``. An objection does not stop the stream (the pipeline ends as
it would; the verdict fails the backup); a failure of the checker itself ends this
process at once, as it stops backout's pipeline when the checker runs in a thread.

Why a process: in a thread of backout the checker (pure Python, ~3 CPU s per GB of
MySQL dump) held the GIL from the thread moving zstd's output to the file, and the
backup ran 2-10 % behind the same pipe with the same checks in processes of their
own (bench 3's proven pipe, ``bench/proof.py``; issue 16). In this process a 1 GB
backup took 2-5 % less time than in the thread, round by round (by hand, three
rounds; README, "Latest figures").

Only the modules the checker's class needs are imported (it is not the CLI).
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

CHUNK = 1 << 20  # as storage.pipeline's, not imported: this process starts bare


def main(argv: list[str]) -> int:
    channel = int(argv[0])
    os.lseek(channel, 0, os.SEEK_SET)
    with os.fdopen(os.dup(channel), "rb") as fh:
        checker = pickle.load(fh)  # written by backout itself, a moment ago
    source, sink = sys.stdin.buffer, sys.stdout.fileno()
    raw = 0
    error: BaseException | None = None
    failed_in = ""
    flowing = True
    while chunk := source.read(CHUNK):  # whole CHUNKs: one checker pass each
        raw += len(chunk)
        if error is None:
            try:
                checker.feed(chunk)
            except Exception as exc:
                error, failed_in = exc, "feed"
                if not _objection(exc):
                    break  # the checker's own failure: the dump stops here (its pipe breaks)
        if flowing:
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(sink, view):]
            except BrokenPipeError:
                flowing = False  # zstd died (its exit code says why): stop the producer
                break
    os.close(sink)  # zstd sees the end now, before the verdict is written
    checks: dict[str, Any] | None = None
    if flowing and error is None and raw:
        try:
            checks = checker.finish()
        except Exception as exc:
            error, failed_in = exc, "finish"
    verdict = pickle.dumps({"raw": raw, "checks": checks, "error": _portable(error),
                            "failed_in": failed_in, "flowing": flowing})
    os.ftruncate(channel, 0)
    os.lseek(channel, 0, os.SEEK_SET)
    view = memoryview(verdict)
    while view:
        view = view[os.write(channel, view):]
    return 0


def _objection(error: BaseException) -> bool:
    """Is ``error`` the checker's objection to the dump (the stream flows on, the
    verdict fails the backup), rather than a failure of the checker itself?"""
    from backout.errors import BackoutError  # loaded with the checker already
    return isinstance(error, BackoutError)


def _portable(error: BaseException | None) -> BaseException | None:
    """``error`` as pickle gives it back, or a plain stand-in with its class and text
    (an exception whose arguments its class cannot take again)."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        if _objection(error):  # still an objection to the dump, in words
            from backout.errors import IntegrityError
            return IntegrityError(str(getattr(error, "message", error)))
        return RuntimeError(f"{type(error).__module__}.{type(error).__qualname__}: {error}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
