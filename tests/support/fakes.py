"""In-process fakes of backout's seams, for orchestration tests without Docker.

``FakePlatform`` implements ``backout.platforms.base.Platform`` over a little model
of a stack (services with a state and a running image, images by reference and ID,
volumes). Every call is recorded in order in ``calls`` as ``(method, *args)``, and
``fail_on`` makes a later call raise, so a test can assert what was called in what
order and what a plan does when the platform fails in the middle.
"""

from __future__ import annotations

import json
import queue
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from backout.config import Config, DatabaseConfig
from backout.engines.access import EngineAccess
from backout.engines.base import EngineBase, EngineContext, TrialTarget, artifact_entry
from backout.environment import Environment
from backout.errors import BackoutError, ExternalError, UnhealthyError
from backout.operations.executor import RunContext
from backout.platforms.base import ContainerInfo, EngineEvent, EventStream, ImageInfo
from backout.state import Store
from backout.storage.pipeline import Checker, stream_from_python
from backout.storage.repositories.base import RemoteSet, RepositoryError


class FakeEventStream:
    """Events a test pushes, read by the monitor's listener thread; iteration blocks
    until the next event and ends at ``close()`` or ``end()`` (the engine went away)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[EngineEvent | None] = queue.Queue()
        self.closed = False

    def push(self, service: str, action: str = "health_status: unhealthy") -> None:
        self._queue.put(EngineEvent(service, action, f"c-{service}", 0.0))

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[EngineEvent]:
        while (event := self._queue.get()) is not None:
            yield event

    def close(self) -> None:
        self.closed = True
        self._queue.put(None)


class FakePlatform:
    kind = "fake"
    switches_itself = False
    builds_images = True

    def __init__(self, project_dir: Path = Path("/fake/project"), *,
                 running: Mapping[str, str] | None = None,
                 stopped: Mapping[str, str] | None = None,
                 images: Mapping[str, str] | None = None,
                 definition: dict[str, Any] | None = None,
                 health: Mapping[str, str | None] | None = None) -> None:
        """``running``/``stopped``: service -> image ID of its container; ``images``:
        reference -> image ID of the images on this host (IDs are images themselves)."""
        self.project_dir = project_dir
        self.state: dict[str, str] = {**{s: "exited" for s in stopped or {}},
                                      **{s: "running" for s in running or {}}}
        self.container_image: dict[str, str] = {**(stopped or {}), **(running or {})}
        self.images: dict[str, str] = dict(images or {})
        self.health: dict[str, str | None] = dict(health or {})
        self.stack: dict[str, Any] = definition if definition is not None else {
            "name": project_dir.name,
            "services": {s: {"image": f"{s}:latest"} for s in self.state}}
        self.volumes: set[str] = set()
        # the definition as written (${VAR} kept) and the variables' values, if set
        self.raw_stack: dict[str, Any] | None = None
        self.variable_values: dict[str, str] = {}
        self.log_text: dict[str, str] = {}
        self.calls: list[tuple[Any, ...]] = []
        self._failures: list[tuple[str, Any, BackoutError]] = []
        # events(): None (no event stream) unless a test asks for streams; each call
        # then opens a new FakeEventStream (the last one is where push() goes).
        self.emits_events = False
        self.event_streams: list[FakeEventStream] = []
        self.events_fail: list[BackoutError] = []  # raised by the next events() calls
        # beside_argv(): None (no container beside a service) unless a test sets the
        # argv's head (the inner command follows it)
        self.beside: list[str] | None = None

    # -- the fake's own controls --------------------------------------------------------
    def fail_on(self, method: str, error: BackoutError | None = None, *,
                first_arg: Any = None) -> None:
        """The next call of ``method`` (whose first argument is ``first_arg``, when
        given) raises ``error`` (default: an UnhealthyError naming the call)."""
        self._failures.append((method, first_arg,
                               error or UnhealthyError(f"fake platform: {method} failed")))

    def called(self, method: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == method]

    def _call(self, method: str, *args: Any) -> None:
        self.calls.append((method, *args))
        for i, (name, first, error) in enumerate(self._failures):
            if name == method and (first is None or (args and args[0] == first)):
                del self._failures[i]
                raise error

    def _has_image(self, ref: str) -> str | None:
        if ref in self.images:
            return self.images[ref]
        return ref if ref in self.images.values() else None

    # -- Platform -----------------------------------------------------------------------
    def ping(self) -> str:
        self._call("ping")
        return "fake-1.0"

    def definition(self) -> dict[str, Any]:
        self._call("definition")
        return self.stack

    def uninterpolated_definition(self) -> dict[str, Any]:
        self._call("uninterpolated_definition")
        return self.raw_stack if self.raw_stack is not None else self.stack

    def variables(self, names: Sequence[str]) -> dict[str, str]:
        self._call("variables", tuple(names))
        return {n: self.variable_values[n] for n in names if n in self.variable_values}

    def project_name(self, definition: Mapping[str, Any] | None = None) -> str:
        data = definition if definition is not None else self.stack
        return str(data.get("name") or self.project_dir.name)

    def volume_mounts(self, definition: Mapping[str, Any] | None = None) -> dict[str, set[str]]:
        data = definition if definition is not None else self.stack
        return {v: set() for v in data.get("volumes") or {}}

    def definition_problem(self, directory: Path) -> str | None:
        self._call("definition_problem", directory)
        return None

    def containers(self, *services: str) -> list[ContainerInfo]:
        self._call("containers", *services)
        return [ContainerInfo(id=f"c-{s}", name=f"{self.project_dir.name}-{s}-1", service=s,
                              state=self.state[s], health=self.health.get(s),
                              image=str(self.stack.get("services", {}).get(s, {}).get("image", "")),
                              image_id=self.container_image.get(s, ""), restart_count=0,
                              started_at="")
                for s in sorted(self.state) if not services or s in services]

    def running_images(self) -> dict[str, str]:
        self._call("running_images")
        return {s: self.container_image[s] for s, st in self.state.items() if st == "running"}

    def stats(self, container_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        self._call("stats", tuple(container_ids))
        return {}

    def logs(self, service: str, since: str, *, timestamps: bool = False) -> str:
        self._call("logs", service, since)
        return self.log_text.get(service, "")

    def events(self) -> EventStream | None:
        if self.events_fail:
            raise self.events_fail.pop(0)
        if not self.emits_events:
            return None
        self.event_streams.append(FakeEventStream())
        return self.event_streams[-1]

    def image(self, ref: str) -> ImageInfo | None:
        self._call("image", ref)
        image_id = self._has_image(ref)
        if image_id is None:
            return None
        tags = tuple(r for r, i in self.images.items() if i == image_id)
        return ImageInfo(id=image_id, repo_tags=tags, repo_digests=(), created="", labels={})

    def tag(self, image_id: str, ref: str) -> None:
        self._call("tag", image_id, ref)
        self.images[ref] = image_id

    def untag(self, ref: str) -> None:
        self._call("untag", ref)
        self.images.pop(ref, None)

    def volume_exists(self, name: str) -> bool:
        self._call("volume_exists", name)
        return name in self.volumes

    def replace_service(self, service: str, image_ref: str, *, operation_id: int) -> None:
        self._call("replace_service", service, image_ref)
        image_id = self._has_image(image_ref)
        if image_id is None:
            raise UnhealthyError(f"fake platform: no image {image_ref}")
        self.state[service] = "running"
        self.container_image[service] = image_id

    def converge(self, *, pull: bool) -> None:
        self._call("converge", pull)
        project = self.project_name()
        for svc, spec in (self.stack.get("services") or {}).items():
            image_id = self._has_image(str(spec.get("image") or f"{project}-{svc}"))
            if image_id is None:
                raise UnhealthyError(f"fake platform: no image for {svc}")
            self.state[svc] = "running"
            self.container_image[svc] = image_id

    def build(self, services: Sequence[str]) -> None:
        self._call("build", tuple(services))
        project = self.project_name()
        for svc in services:
            spec = (self.stack.get("services") or {}).get(svc, {})
            self.images[str(spec.get("image") or f"{project}-{svc}")] = f"sha256:built-{svc}"

    def stop(self, services: Sequence[str], *, timeout: float = 180) -> list[str]:
        self._call("stop", tuple(services))
        running = sorted(s for s in services if self.state.get(s) in ("running", "restarting"))
        for s in running:
            self.state[s] = "exited"
        return running

    def start(self, services: Sequence[str]) -> None:
        self._call("start", tuple(services))
        for s in services:
            self.state[s] = "running"

    def bring_up(self, service: str) -> None:
        self._call("bring_up", service)
        self.state[service] = "running"

    def exec_argv(self, service: str, inner: Sequence[str],
                  env_names: Sequence[str] = ()) -> list[str]:
        return ["fake-exec", service, *inner]

    def container_exec_argv(self, container_id: str, inner: Sequence[str],
                            env_names: Sequence[str] = ()) -> list[str]:
        return ["fake-exec", container_id, *inner]

    def one_off_argv(self, service: str, *, entrypoint: str, args: Sequence[str],
                     label: str) -> list[str]:
        return ["fake-run", service, entrypoint, *args]

    def beside_argv(self, service: str, inner: Sequence[str], env_names: Sequence[str] = (),
                    *, mount: tuple[Path, str], label: str) -> list[str] | None:
        self._call("beside_argv", service, list(inner), list(env_names), mount, label)
        return None if self.beside is None else [*self.beside, *inner]

    def published_address(self, service: str, port: int) -> str | None:
        self._call("published_address", service, port)
        return None


def run_context(store: Store, config: Config | None = None, platform: Any = None,
                env: Environment | None = None) -> RunContext:
    """A RunContext for in-process tests (by default a bare config whose project is
    the store's directory, and a FakePlatform)."""
    if config is None:
        config = Config(path=store.state_dir / "backout.toml", project_dir=store.state_dir)
    return RunContext(env or Environment(), config, store,
                      platform if platform is not None else FakePlatform(config.project_dir))


class FakeEngine(EngineBase):
    """An in-process database engine (``backout.engines.base.Engine``): its dump writes
    a small plain artifact and returns a manifest section with ``counts`` as the
    database's counts; its restore "loads" the section's counts (or ``restored``
    when a test wants a restore that does not reproduce them). Every call is recorded
    in order in ``calls`` as ``(method, database name)``; ``fail_on`` makes a later
    call raise.

    Install it for a test with ``install_engine(monkeypatch, engine)``: every
    ``backout.engines.get`` then answers with it."""

    suffix = ".fake"
    description = "a fake dump"
    count_unit = "rows"
    image_patterns = ("fakedb",)
    credentials: tuple[tuple[str | None, tuple[str, ...], tuple[str, ...] | None], ...] = ()

    def __init__(self, kind: str = "mysql", counts: Mapping[str, int] | None = None) -> None:
        self.type = kind  # the type the config names (validated against the real table)
        self.counts: dict[str, int] = dict(counts or {"items": 3})
        self.restored: dict[str, int] | None = None
        self.calls: list[tuple[str, str]] = []
        self.loss_current: list[dict[str, Any] | None] = []  # data_loss's ``current``, in order
        self._failures: list[tuple[str, str | None, BackoutError]] = []

    def fail_on(self, method: str, database: str | None = None,
                error: BackoutError | None = None) -> None:
        """The next call of ``method`` (for ``database``, when given) raises ``error``."""
        self._failures.append((method, database,
                               error or ExternalError(f"fake engine: {method} failed")))

    def called(self, method: str) -> list[str]:
        return [name for m, name in self.calls if m == method]

    def _call(self, method: str, database: str) -> None:
        self.calls.append((method, database))
        for i, (m, db, error) in enumerate(self._failures):
            if m == method and db in (None, database):
                del self._failures[i]
                raise error

    def dump(self, ctx: EngineContext, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
        self._call("dump", db.name)
        name = self.artifact_name(db)
        what = f"{db.name} dump"
        data = json.dumps(self.counts).encode()
        scanned = stream_from_python(  # the real pipeline: zstd, checked as it goes, fsync
            ctx.env, lambda pipe: pipe.write(data), set_dir / name, what=what, level=1,
            checker=self.checker({}, what)).scanned
        assert scanned is not None
        return {"database": {"type": self.type, "service": db.service,
                             "counts": scanned.checks["counts"], "artifacts": [name]},
                "artifact": artifact_entry(name, "fake+zstd", scanned, db.name)}

    def checker(self, section: Mapping[str, Any], what: str) -> Checker:
        return _CountsChecker()

    def scanned_counts(self, section: Mapping[str, Any],
                       checks: Mapping[str, Any]) -> tuple[Any, Any]:
        return section.get("counts"), checks.get("counts")

    def sniff(self, head: bytes, path: Path) -> int:
        return 3 if head.startswith(b"{") else 0

    def section_for_file(self, env: Environment, db: DatabaseConfig,
                         artifact: Path) -> dict[str, Any]:
        self._call("section_for_file", db.name)
        return {"type": self.type, "counts": json.loads(artifact.read_text())}

    def expected_counts(self, section: Mapping[str, Any]) -> Any:
        return section.get("counts")

    def counts_match(self, section: Mapping[str, Any], counts: Any) -> bool:
        return bool(section.get("counts") == counts)

    def restore(self, env: Environment, access: EngineAccess, artifact: Path,
                section: dict[str, Any]) -> dict[str, Any]:
        self._call("restore", access.db.name)
        return {"counts": self.restored if self.restored is not None else section.get("counts")}

    def trial_restore(self, target: TrialTarget, artifact: Path,
                      section: dict[str, Any]) -> dict[str, Any]:
        self._call("trial_restore", target.db.name)
        return {"ok": True, "expected": section.get("counts"), "restored": section.get("counts")}

    def probe(self, access: EngineAccess) -> str:
        self._call("probe", access.db.name)
        return "fake 1.0"

    def data_loss(self, access: EngineAccess, section: dict[str, Any],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
        self._call("data_loss", access.db.name)
        self.loss_current.append(current)
        return {"changes": 0}

    def overwritten(self, db: DatabaseConfig) -> str:
        return "its fake tables are replaced"


class _CountsChecker:
    """The fake's format: the JSON of its counts."""

    def __init__(self) -> None:
        self.data = b""

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def finish(self) -> dict[str, Any]:
        return {"counts": json.loads(self.data)}


def install_engine(monkeypatch: Any, engine: FakeEngine) -> FakeEngine:
    from backout import engines

    monkeypatch.setattr(engines, "get", lambda kind: engine)
    return engine


class FakeRepository:
    """An in-process repository (``backout.storage.repositories.base.Repository``): copies
    kept as directories under ``FakeRepository.root/<url>``, every call recorded in
    ``FakeRepository.calls`` as ``(repository, method, set id)``; ``fail_on(url, method,
    error)`` makes that method of that repository raise. Installed in place of restic by
    ``install_repository(monkeypatch, root)``."""

    root: ClassVar[Path] = Path("/nonexistent")
    calls: ClassVar[list[tuple[str, str, str]]] = []
    failures: ClassVar[dict[tuple[str, str], Exception]] = {}

    def __init__(self, env: Environment, repo: Any, password: str) -> None:
        del env, password
        self.name = repo.name
        self.url: str = repo.url
        self.dir = FakeRepository.root / repo.url

    @classmethod
    def fail_on(cls, url: str, method: str, error: Exception) -> None:
        cls.failures[(url, method)] = error

    def _call(self, method: str, set_id: str) -> None:
        FakeRepository.calls.append((self.name, method, set_id))
        error = FakeRepository.failures.get((self.url, method))
        if error is not None:
            raise error

    def location(self) -> str:
        return self.url

    def put(self, set_dir: Path, completed_at: Any) -> str:
        self._call("put", set_dir.name)
        shutil.copytree(set_dir, self.dir / set_dir.name, dirs_exist_ok=True)
        (self.dir / set_dir.name / ".completed").write_text(completed_at.isoformat())
        return f"snap-{set_dir.name}"

    def check(self, snapshot: str, set_id: str, manifest: bytes, sizes: dict[str, int]) -> str:
        self._call("check", set_id)
        if (self.dir / set_id / "manifest.json").read_bytes() != manifest:
            raise RepositoryError(f"repository {self.name}: manifest differs")
        return "fake check"

    def check_repository(self) -> str:
        self._call("check_repository", "")
        return "fake repository check"

    def read_file(self, snapshot: str, set_id: str, name: str) -> bytes:
        self._call("read_file", set_id)
        data: bytes = (self.dir / set_id / name).read_bytes()
        return data

    def fetch(self, snapshot: str, set_id: str, dest: Path) -> Path:
        self._call("fetch", set_id)
        shutil.copytree(self.dir / set_id, dest / set_id,
                        ignore=shutil.ignore_patterns(".completed"))
        return dest / set_id

    def sets(self) -> list[RemoteSet]:
        from datetime import datetime

        self._call("sets", "")
        if not self.dir.is_dir():
            return []
        return [RemoteSet(p.name, f"snap-{p.name}",
                          datetime.fromisoformat((p / ".completed").read_text()))
                for p in sorted(self.dir.iterdir())]

    def forget(self, snapshots: list[str]) -> None:
        for snap in snapshots:
            self._call("forget", snap.removeprefix("snap-"))
            shutil.rmtree(self.dir / snap.removeprefix("snap-"))


def install_repository(monkeypatch: Any, root: Path) -> type[FakeRepository]:
    """FakeRepository in place of restic (the table's default kind), with a fresh record."""
    from backout.storage import repositories

    monkeypatch.setattr(FakeRepository, "root", root)
    monkeypatch.setattr(FakeRepository, "calls", [])
    monkeypatch.setattr(FakeRepository, "failures", {})
    monkeypatch.setitem(repositories.REPOSITORIES, "restic",
                        "tests.support.fakes:FakeRepository")
    return FakeRepository
