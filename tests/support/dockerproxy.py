"""A Docker Engine that stops answering, made without touching dockerd: a proxy on a
unix socket of our own (``DOCKER_HOST=unix://...``) in front of the real socket.

``arm(after_bytes)`` makes the proxy freeze once one connection has carried that many
bytes from the client (a restore streamed through ``docker compose exec``): from then
on nothing moves in either direction, on any connection, and new connections are
accepted and left unanswered, as a hung engine does. ``thaw()`` closes every frozen
connection (their clients have given up) and forwards new ones again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

UPSTREAM = "/var/run/docker.sock"


class FreezingProxy:
    def __init__(self, path: Path, upstream: str = UPSTREAM) -> None:
        self.path = path
        self.upstream = upstream
        self.frozen = threading.Event()
        self.froze_at_bytes: int | None = None
        self._armed: int | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server.bind(str(path))
        self._server.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def arm(self, after_bytes: int) -> None:
        self._armed = after_bytes

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        with self._lock:
            doomed, self._sockets = self._sockets, []
        for s in doomed:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        self._armed = None
        self.frozen.clear()

    def close(self) -> None:
        self._closed = True
        self.thaw()
        with contextlib.suppress(OSError):
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> FreezingProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            if self.frozen.is_set():
                continue  # accepted, never answered
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        sent = 0
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if from_client:
                sent += len(data)
                if self._armed is not None and sent >= self._armed and not self.frozen.is_set():
                    self.froze_at_bytes = sent
                    self.frozen.set()
            while self.frozen.is_set():  # hold the data: a hung engine reads no more
                time.sleep(0.2)
                if self._closed or src.fileno() == -1:
                    return
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
