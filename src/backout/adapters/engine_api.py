"""The Docker Engine API over its unix socket, with the standard library only.

The monitor asks the engine the same few questions every few seconds; a ``docker``
CLI process per question costs far more CPU than the answer (issue 16). This
adapter speaks HTTP to the socket (``http.client`` over ``AF_UNIX``): connections
are kept and reused (a small pool, so several reads can run at once), every call
has a timeout, the API version is negotiated once (``/_ping``), and failures map
to backout's errors as the CLI adapter's do (``DockerUnavailableError``: exit 6).

Only a local unix socket is spoken to: ``DOCKER_HOST=unix://...`` or the default
socket. A ``tcp://``/``ssh://`` host or a Docker context other than ``default``
(TLS, SSH tunnels, credentials) stays with the CLI: ``for_environment`` returns
None and callers keep their CLI path.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from backout.adapters.docker import ENGINE_FIX
from backout.environment import Environment
from backout.errors import DockerUnavailableError, ExternalError

DEFAULT_SOCKET = "/var/run/docker.sock"
# The newest API version this adapter speaks; an older engine is spoken to in its own
# (every call used here exists since 1.25; ``one-shot`` stats since 1.41, ignored before).
MAX_API = (1, 43)
POOL_SIZE = 8  # idle connections kept; also the most concurrent reads
LOG_TAIL_FIRST = 200  # entries: what a quiet service logs in minutes (a busy one gets more)
LOG_TAIL_MOST = 100_000
# The engine's stamp of a log entry (RFC 3339, nanoseconds, fixed width; UTC for the
# json-file log): compared as text, it orders as time does.
STAMP_WIDTH = 30
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")
_ENTRY = re.compile(_STAMP.pattern + " ")  # begins every entry (found: at least the entries)
_MID_STAMP = re.compile(r"[^\n]" + _ENTRY.pattern)
T = TypeVar("T")
R = TypeVar("R")


def socket_path(environ: Mapping[str, str]) -> str | None:
    """The engine's unix socket when the environment names a local one (or nothing,
    which means the default socket); None for any other host or context."""
    host = environ.get("DOCKER_HOST", "")
    if host:
        return host[len("unix://"):] if host.startswith("unix://") else None
    context = environ.get("DOCKER_CONTEXT") or _current_context(environ)
    if context and context != "default":
        return None
    return DEFAULT_SOCKET


def _current_context(environ: Mapping[str, str]) -> str | None:
    directory = environ.get("DOCKER_CONFIG") or str(Path(environ.get("HOME") or "/") / ".docker")
    try:
        data = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    context = data.get("currentContext") if isinstance(data, dict) else None
    return context if isinstance(context, str) else None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    def message(self) -> str:
        """The engine's error message (its JSON ``message``), else the body."""
        try:
            return str(self.json().get("message"))
        except (ValueError, AttributeError):
            return self.body.decode(errors="replace").strip()[:200]


class EventStream:
    """The engine's event stream on a connection of its own: one JSON object per
    event, for as long as the engine sends them. ``close()`` (from any thread) ends
    the iteration of a reader blocked waiting for the next event."""

    def __init__(self, connection: _UnixConnection, response: http.client.HTTPResponse) -> None:
        self._connection = connection
        self._response = response
        self._closed = False
        self._reading = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            if self._closed:
                return
            self._reading = True
        try:
            while not self._closed:
                try:
                    line = self._response.readline()
                except (OSError, ValueError, http.client.HTTPException):
                    return  # shut down under us, or the engine went away
                if not line:
                    return
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        yield event
        finally:
            with self._lock:
                self._reading = False
                self._closed = True
            self._connection.close()

    def close(self) -> None:
        # A reader blocked in readline is woken by the shutdown and closes the
        # connection itself (closing its buffered file under it would race with it).
        with self._lock:
            self._closed = True
            reading = self._reading
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if not reading:
            self._connection.close()


class EngineAPI:
    """One Docker Engine, spoken to over its unix socket."""

    def __init__(self, env: Environment, path: str = DEFAULT_SOCKET, *,
                 timeout: float = 10.0) -> None:
        self.env = env
        self.path = path
        self.timeout = timeout
        self._idle: list[_UnixConnection] = []
        self._lock = threading.Lock()
        self._version: str | None = None
        self._kernel: str | None = None
        # Previous CPU sample per container: CPU % is a rate between two one-shot reads.
        self._cpu: dict[str, tuple[int, int]] = {}
        # How many last log entries to ask for first, per container (grown when a tail
        # did not reach back far enough: a container that logs more).
        self._log_tails: dict[str, int] = {}

    @classmethod
    def for_environment(cls, env: Environment) -> EngineAPI | None:
        path = socket_path(env.env)
        return None if path is None else cls(env, path)

    # -- connections ---------------------------------------------------------------------
    def _take(self) -> tuple[_UnixConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return _UnixConnection(self.path, self.timeout), False

    def _give_back(self, connection: _UnixConnection) -> None:
        with self._lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _unavailable(self, exc: BaseException, what: str) -> DockerUnavailableError:
        if isinstance(exc, TimeoutError | socket.timeout):
            return DockerUnavailableError(
                f"Docker Engine does not answer ({what} timed out after {self.timeout:g}s "
                f"on unix://{self.path})", fix=ENGINE_FIX)
        if isinstance(exc, PermissionError):
            return DockerUnavailableError(
                f"permission denied on the Docker Engine socket unix://{self.path}",
                fix="run backout as root or as a member of the docker group")
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return DockerUnavailableError(
            f"Docker Engine is not reachable at unix://{self.path}: {reason}", fix=ENGINE_FIX)

    def request(self, method: str, path: str, query: Mapping[str, Any] | None = None, *,
                versioned: bool = True, timeout: float | None = None) -> Response:
        """One request on a pooled connection; the whole answer read. A connection the
        engine closed while idle is replaced once, silently, and the idle ones with it."""
        url = (f"/v{self.api_version()}" if versioned else "") + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        start = time.monotonic()
        for attempt in (1, 2):
            # the retry gets a new connection: another thread may give back a dead one
            connection, reused = self._take() if attempt == 1 else (
                _UnixConnection(self.path, self.timeout), False)
            try:
                if connection.sock is not None:
                    connection.sock.settimeout(timeout or self.timeout)
                else:
                    connection.timeout = timeout or self.timeout
                connection.request(method, url)
                answer = connection.getresponse()
                body = answer.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                connection.close()
                if reused and attempt == 1:
                    # the engine restarted: every idle connection is as dead as this one
                    self.close()
                    continue
                raise self._unavailable(exc, f"{method} {path}") from exc
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise self._unavailable(exc, f"{method} {path}") from exc
            if answer.will_close:
                connection.close()
            else:
                self._give_back(connection)
            self.env.log_external(f"{method} unix://{self.path}{url}  "
                                  f"({time.monotonic() - start:.3f}s, {answer.status})")
            return Response(answer.status, body, dict(answer.getheaders()))
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, path: str, query: Mapping[str, Any] | None = None, *,
              missing_ok: bool = False) -> Any:
        answer = self.request("GET", path, query)
        if answer.status == 404 and missing_ok:
            return None
        if answer.status >= 400:
            raise ExternalError(f"Docker Engine API GET {path}: {answer.status} "
                                f"{self.env.redact(answer.message())}")
        try:
            return answer.json()
        except ValueError as exc:
            raise ExternalError(f"Docker Engine API GET {path}: not JSON") from exc

    def api_version(self) -> str:
        """The version spoken: the engine's own (``/_ping``), at most ``MAX_API``."""
        if self._version is None:
            answer = self.request("GET", "/_ping", versioned=False)
            if answer.status != 200:
                raise DockerUnavailableError(
                    f"Docker Engine at unix://{self.path} answers /_ping with {answer.status}",
                    fix=ENGINE_FIX)
            headers = {k.lower(): v for k, v in answer.headers.items()}
            self._version = negotiate(headers.get("api-version"))
        return self._version

    # -- what the monitor reads --------------------------------------------------------
    def version(self) -> str:
        """The engine's version (``/version``); ``DockerUnavailableError`` without one."""
        data = self._json("/version")
        version = str(data.get("Version") or "") if isinstance(data, dict) else ""
        if not version:
            raise DockerUnavailableError(f"Docker Engine at unix://{self.path} gave no version",
                                         fix=ENGINE_FIX)
        return version

    def kernel(self) -> str | None:
        """The kernel the engine runs on (``/version``'s KernelVersion), asked once."""
        if self._kernel is None:
            data = self._json("/version")
            self._kernel = str(data.get("KernelVersion") or "") if isinstance(data, dict) else ""
        return self._kernel or None

    def list_containers(self, labels: Sequence[str]) -> list[dict[str, Any]]:
        """Every container (any state) carrying all of ``labels`` (``key=value``)."""
        data = self._json("/containers/json",
                          {"all": "1", "filters": json.dumps({"label": list(labels)})})
        return [c for c in data if isinstance(c, dict)] if isinstance(data, list) else []

    def inspect_container(self, container_id: str) -> dict[str, Any] | None:
        """The container's inspect document; None when it is gone."""
        data = self._json(f"/containers/{container_id}/json", missing_ok=True)
        return data if isinstance(data, dict) else None

    def inspect_containers(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Inspected concurrently, in the order given; those gone meanwhile left out."""
        return [raw for raw in self.concurrently(self.inspect_container, ids) if raw is not None]

    def network_addresses(self, network_id: str, container_id: str) -> list[str]:
        """The container's addresses (IPv4, then IPv6; no prefix length) on one network,
        from the network's own inspect: it answers while the container is still
        starting (the container's inspect waits until its start is done)."""
        data = self._json(f"/networks/{network_id}", missing_ok=True)
        members = (data.get("Containers") or {}) if isinstance(data, dict) else {}
        entry = members.get(container_id) or {}
        return [str(a).split("/", 1)[0] for a in (entry.get("IPv4Address"),
                                                  entry.get("IPv6Address")) if a]

    def _post_or_delete(self, method: str, path: str, query: Mapping[str, Any], *,
                        timeout: float, what: str) -> bool:
        """False when the container is gone (404); an error answer raises."""
        answer = self.request(method, path, query, timeout=timeout)
        if answer.status == 404:
            return False
        if answer.status >= 400:
            raise ExternalError(f"Docker Engine API {what}: {answer.status} "
                                f"{self.env.redact(answer.message())}")
        return True

    def stop_container(self, container_id: str, *, grace_seconds: float | None,
                       timeout: float = 180) -> bool:
        """Its stop signal, then SIGKILL after the grace, as ``docker stop -t``; the
        answer comes once the container has stopped and left its networks (304: it
        already had). ``grace_seconds`` None: the container's own (the engine's 10 s
        unless Compose set the service's ``stop_grace_period`` on it), as `docker
        compose stop` gives it; ``timeout``: how long the answer may take (a grace
        longer than that is the caller's to avoid). False when the container is gone."""
        query: dict[str, int] = {}
        if grace_seconds is not None:
            query["t"] = max(0, math.ceil(grace_seconds))  # never shorter than asked
            timeout = query["t"] + 60
        return self._post_or_delete("POST", f"/containers/{container_id}/stop", query,
                                    timeout=timeout, what=f"stop {container_id[:12]}")

    def remove_container(self, container_id: str, *, volumes: bool = False) -> bool:
        """As ``docker rm -f`` (its anonymous volumes kept, as the CLI keeps them;
        ``volumes``: as ``docker rm -f -v``)."""
        return self._post_or_delete("DELETE", f"/containers/{container_id}",
                                    {"force": "1", **({"v": "1"} if volumes else {})},
                                    timeout=60, what=f"remove {container_id[:12]}")

    # -- images ----------------------------------------------------------------------
    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        """The image's inspect document (``ref``: a name[:tag] or an ID); None when the
        engine has no such image."""
        data = self._json(f"/images/{urllib.parse.quote(ref, safe='/:@')}/json",
                          missing_ok=True)
        return data if isinstance(data, dict) else None

    def tag_image(self, image: str, ref: str) -> None:
        """``docker image tag IMAGE REF``."""
        repo, tag = split_reference(ref)
        answer = self.request("POST", f"/images/{urllib.parse.quote(image, safe='/:@')}/tag",
                              {"repo": repo, "tag": tag}, timeout=60)
        if answer.status >= 400:
            raise ExternalError(f"Docker Engine API tag {image[:19]} as {ref}: {answer.status} "
                                f"{self.env.redact(answer.message())}")

    def processes(self, container_id: str) -> list[str]:
        """``PID ARGS`` of each process in the container, as ``docker top -o pid,args``
        prints them; empty when it is gone or not running."""
        answer = self.request("GET", f"/containers/{container_id}/top",
                              {"ps_args": "-o pid,args"})
        if answer.status >= 400:
            return []
        try:
            rows = answer.json().get("Processes") or []
        except (ValueError, AttributeError):
            return []
        return [" ".join(str(field) for field in row) for row in rows if isinstance(row, list)]

    def stats(self, container_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Memory % (as ``docker stats`` computes it) and CPU % per container, from one
        one-shot read each (concurrently). CPU % is over the time since this adapter's
        previous read of the container (0 on the first)."""
        def one(cid: str) -> tuple[str, dict[str, Any] | None]:
            data = self._json(f"/containers/{cid}/stats",
                              {"stream": "false", "one-shot": "true"}, missing_ok=True)
            return cid, data if isinstance(data, dict) else None

        out: dict[str, dict[str, float]] = {}
        for cid, data in self.concurrently(one, container_ids):
            if data is None or not data.get("memory_stats"):
                continue  # gone, or not running (the engine sends empty stats)
            sample = cpu_sample(data)
            previous = self._cpu.get(cid)
            if sample is not None:
                self._cpu[cid] = sample
            out[cid] = {"memory_percent": memory_percent(data),
                        "cpu_percent": cpu_percent(previous, sample, online_cpus(data))}
        return out

    def logs(self, container_id: str, *, since: str, timestamps: bool, tty: bool) -> str | None:
        """The container's stdout and stderr since ``since`` (as the CLI's ``--since``:
        RFC 3339, Unix seconds, or a duration ago); None when the container is gone.

        With ``timestamps``, the container's last entries are asked for first (the
        engine finds a tail by reading its log file backwards, but ``since`` by decoding
        the whole file from its start, every time, and a container's log grows for as
        long as it runs: a monitor asking every few seconds paid for all of it each
        time). A tail shorter than asked for is the whole log; a tail whose first two
        entries are a second before ``since`` holds every entry since then. Otherwise
        (more was written: the next tail is longer; parts of a line over 16 KB in it;
        stamps not in the engine's UTC form) the log is read since ``since`` as before."""
        since_unix = unix_time(since)
        if timestamps:
            return self._logs_by_tail(container_id, since_unix, tty)
        return self._read_logs(container_id, {"since": since_unix}, timestamps=timestamps,
                               tty=tty)

    def _logs_by_tail(self, container_id: str, since: str, tty: bool) -> str | None:
        tail = self._log_tails.get(container_id, LOG_TAIL_FIRST)
        if tail == 0:  # its stamps are not the UTC form the tail is checked by
            return self._read_logs(container_id, {"since": since}, timestamps=True, tty=tty)
        text = self._read_logs(container_id, {"tail": str(tail)}, timestamps=True, tty=tty)
        if not text:
            return text  # gone (None), or an empty log: nothing since either
        if not _STAMP.fullmatch(text[:STAMP_WIDTH]):
            self._log_tails[container_id] = 0
            return self._read_logs(container_id, {"since": since}, timestamps=True, tty=tty)
        *whole, rest = text.split("\n")
        # Fewer entries than asked for: the whole log. Else the tail must reach back
        # past ``since``. A stamp inside a line is a part of a line longer than 16 KB
        # (the engine splits those, every part stamped as the first): such parts may
        # sit in the log among later entries, so a tail holding one is not trusted.
        complete = len(whole) + bool(rest) < tail or _reaches_back(whole, since)
        if not complete or _MID_STAMP.search(text):
            lines = self._read_logs(container_id, {"since": since}, timestamps=True, tty=tty)
            if lines is not None and not complete:  # a longer tail reaches further back
                self._log_tails[container_id] = min(
                    LOG_TAIL_MOST, max(2 * tail, 2 * len(_ENTRY.findall(lines))))
            return lines
        # Kept as the engine's ``since`` keeps an entry: from its stamp on.
        cut = engine_stamp(since)
        kept = [f"{line}\n" for line in whole if line[:STAMP_WIDTH] >= cut]
        # the next tail: twice what came since, so it reaches back again (and shrinks
        # back when a burst of logging is over)
        self._log_tails[container_id] = min(LOG_TAIL_MOST, max(LOG_TAIL_FIRST, 2 * len(kept)))
        return "".join(kept) + (rest if rest[:STAMP_WIDTH] >= cut else "")

    def _read_logs(self, container_id: str, query: dict[str, str], *, timestamps: bool,
                   tty: bool) -> str | None:
        query = {"stdout": "1", "stderr": "1", **query, "timestamps": "1" if timestamps else "0"}
        answer = self.request("GET", f"/containers/{container_id}/logs", query, timeout=60)
        if answer.status == 404:
            return None
        if answer.status >= 400:
            raise ExternalError(f"Docker Engine API logs of {container_id[:12]}: "
                                f"{answer.status} {self.env.redact(answer.message())}")
        payload = answer.body if tty else b"".join(data for _, data in demultiplex(answer.body))
        return payload.decode(errors="replace")

    def events(self, filters: Mapping[str, Sequence[str]], *,
               since: float | None = None) -> EventStream:
        """The event stream (``/events``) matching ``filters``, from now (or ``since``),
        on a connection of its own that waits as long as it takes for the next event."""
        version = self.api_version()
        query: dict[str, str] = {"filters": json.dumps({k: list(v) for k, v in filters.items()})}
        if since is not None:
            query["since"] = f"{since:.9f}"
        url = f"/v{version}/events?{urllib.parse.urlencode(query)}"
        connection = _UnixConnection(self.path, self.timeout)
        try:
            connection.request("GET", url)
            answer = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._unavailable(exc, "GET /events") from exc
        if answer.status != 200:
            message = Response(answer.status, answer.read(), {}).message()
            connection.close()
            raise ExternalError(f"Docker Engine API GET /events: {answer.status} {message}")
        if connection.sock is not None:
            connection.sock.settimeout(None)  # an event may be hours away
        self.env.log_external(f"GET unix://{self.path}{url}  (event stream open)")
        return EventStream(connection, answer)

    @staticmethod
    def concurrently(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items`` on up to ``POOL_SIZE`` threads, results in order; the
        first error raised is raised here."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(POOL_SIZE, len(items)),
                                thread_name_prefix="backout-engine") as pool:
            return list(pool.map(fn, items))


def split_reference(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag): the tag is after the last colon that follows the
    last slash (``host:5000/app`` has none); ``latest`` when it is not given."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, "latest"


def negotiate(server: str | None) -> str:
    """The API version to speak: the server's when older than ours (or unknown: ours)."""
    try:
        major, minor = (int(part) for part in str(server).split(".")[:2])
    except ValueError:
        return "{}.{}".format(*MAX_API)
    return "{}.{}".format(*min((major, minor), MAX_API))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def unix_time(value: str, now: float | None = None) -> str:
    """A ``--since`` value as the API takes it (``seconds.nanoseconds``): the CLI
    converts RFC 3339 times and durations (``10m``: that long ago) itself, the
    engine's API reads only Unix time."""
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return value
    if re.fullmatch(f"(?:{_DURATION.pattern})+", value):
        ago = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(value))
        return f"{(time.time() if now is None else now) - ago:.9f}"
    # Python reads at most microseconds: cut a nanosecond fraction down to them.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00").replace("z", "+00:00"))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ExternalError(f"not a time the Docker Engine reads: {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a time without a zone is local, as for the CLI
    return f"{moment.timestamp():.6f}"


def engine_stamp(unix: str, shift: int = 0) -> str:
    """Unix time (``seconds[.fraction]`` as ``unix_time`` gives it), ``shift`` whole
    seconds later, as the engine stamps a log entry in UTC: nanoseconds, fixed width."""
    seconds, _, fraction = unix.partition(".")
    moment = datetime.fromtimestamp(int(seconds) + shift, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{(fraction + '0' * 9)[:9]}Z"


def _reaches_back(lines: list[str], since: str) -> bool:
    """Whether a tail's first two entries (whole lines) are stamped more than a second
    before ``since``: the engine writes stdout's and stderr's entries in the order it
    read them, a little out of their stamps' order at times, and the last part of a
    long line carries its first part's stamp (the entry after it then shows when the
    tail really begins)."""
    reach = engine_stamp(since, -1)
    return len(lines) >= 2 and all(_STAMP.fullmatch(line[:STAMP_WIDTH]) is not None
                                   and line[:STAMP_WIDTH] < reach for line in lines[:2])


def demultiplex(data: bytes) -> list[tuple[int, bytes]]:
    """The frames of a non-TTY container's attach/logs stream: an 8-byte header
    (stream: 0 stdin, 1 stdout, 2 stderr; three zero bytes; big-endian payload size),
    then the payload. A truncated last frame keeps what arrived."""
    frames: list[tuple[int, bytes]] = []
    at = 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4:at + 8], "big")
        frames.append((data[at], data[at + 8:at + 8 + size]))
        at += 8 + size
    return frames


def memory_percent(stats: Mapping[str, Any]) -> float:
    """Usage without the inactive page cache over the limit, as ``docker stats`` shows."""
    memory = stats.get("memory_stats") or {}
    usage, limit = memory.get("usage") or 0, memory.get("limit") or 0
    if not usage or not limit:
        return 0.0
    detail = memory.get("stats") or {}
    inactive = detail.get("total_inactive_file")  # cgroup v1
    if inactive is None:
        inactive = detail.get("inactive_file")  # cgroup v2
    if inactive is not None and inactive < usage:
        usage -= inactive
    return float(usage) / float(limit) * 100.0


def cpu_sample(stats: Mapping[str, Any]) -> tuple[int, int] | None:
    """(container CPU time, host CPU time), both in nanoseconds."""
    cpu = stats.get("cpu_stats") or {}
    total = (cpu.get("cpu_usage") or {}).get("total_usage")
    system = cpu.get("system_cpu_usage")
    return None if total is None or system is None else (int(total), int(system))


def online_cpus(stats: Mapping[str, Any]) -> int:
    cpu = stats.get("cpu_stats") or {}
    return int(cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage")
                                             or ()) or 1)


def cpu_percent(previous: tuple[int, int] | None, current: tuple[int, int] | None,
                cpus: int) -> float:
    """The container's share of the host's CPUs between two samples (100 per CPU)."""
    if previous is None or current is None:
        return 0.0
    used, elapsed = current[0] - previous[0], current[1] - previous[1]
    if used <= 0 or elapsed <= 0:
        return 0.0
    return used / elapsed * cpus * 100.0

