"""Descriptors numbered past 1023: ``select.select`` refuses them (FD_SETSIZE), and a
long-running process (a ``schedule``, a monitor) can reach them."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import pytest

FD_SETSIZE = 1024


@contextlib.contextmanager
def high_descriptors() -> Iterator[None]:
    """Every free descriptor below FD_SETSIZE taken while the body runs, so the ones it
    opens are numbered past it. Skips the test when the limit cannot be raised so far."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_SETSIZE + 256
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    taken: list[int] = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            if fd >= FD_SETSIZE:
                os.close(fd)
                break
            taken.append(fd)
        yield
    finally:
        for fd in taken:
            os.close(fd)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
