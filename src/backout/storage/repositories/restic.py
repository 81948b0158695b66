"""A restic repository (local path, ``sftp:``, ``rest:``, ``s3:``): encrypted,
compressed, deduplicated copies of backup sets, one snapshot per set.

Each set is backed up from inside the backup directory, so a snapshot's tree is
``/<set-id>/...`` and its tags say ``backout``, ``set:<id>`` and the set's completion
time. The password reaches restic as ``RESTIC_PASSWORD`` in its environment, never in
argv; restic's failures are classified by what it prints (restic 0.14 exits 1 for all
of them).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from backout import proc
from backout.config import RepositoryConfig
from backout.environment import Environment
from backout.errors import ExternalError
from backout.storage.repositories.base import (
    RemoteSet,
    RepositoryError,
    RepositoryFullError,
    RepositoryLockedError,
    RepositoryMissingError,
    RepositoryPasswordError,
    RepositoryUnreachableError,
)

TAG = "backout"
SET_TAG = "set:"
COMPLETED_TAG = "completed:"
STAMP = "%Y%m%dT%H%M%SZ"
# Credentials of restic's storage backends, passed through from our environment
# (the child environment drops every variable whose name looks like a secret).
BACKEND_CREDENTIALS = ("AWS_", "B2_", "AZURE_", "GOOGLE_", "RESTIC_REST_", "OS_")
# An SFTP link that stops answering is given up after about 15 s instead of TCP's minutes.
SSH_KEEPALIVE = ("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")

# What restic prints -> the error it means; the first match wins.
_FAULTS: tuple[tuple[tuple[str, ...], type[RepositoryError], str], ...] = (
    (("wrong password",), RepositoryPasswordError,
     "check the variable or file named by password_env / password_file"),
    (("repository is already locked", "unable to create lock"), RepositoryLockedError,
     "another process uses the repository; wait for it, or, if it died, "
     "`restic unlock` (backout retries the copy on its next run)"),
    (("no space left on device", "disk quota exceeded"), RepositoryFullError,
     "free space on the repository's disk; backout retries the copy on its next run"),
    (("is there a repository at the following location", "unable to open config file"),
     RepositoryMissingError, "check the url, or initialise it (backout does on the first copy)"),
    (("connection refused", "no route to host", "timed out", "timeout", "connection closed",
      "connection reset", "broken pipe", "ssh command exited", "network is unreachable",
      "unable to start the sftp session", "eof", "host key verification failed",
      "permission denied (publickey"), RepositoryUnreachableError,
     "check the network path and the SSH/HTTP access to the repository host; backout retries "
     "the copy on its next run"),
)


def classify(what: str, stderr: str) -> RepositoryError:
    """The error a failed restic run means, from its output (one line, redacted)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for needles, cls, fix in _FAULTS:
        for line in lines:  # the line that says it, not restic's closing advice
            if any(n in line.lower() for n in needles):
                return cls(f"{what}: {line.removeprefix('Fatal: ')}", fix=fix)
    return RepositoryError(f"{what}: {proc.last_line(stderr)}",
                           fix="see `backout --debug` and restic's message")


class ResticRepository:
    def __init__(self, env: Environment, repo: RepositoryConfig, password: str) -> None:
        self.env = env
        self.repo = repo
        self.name = repo.name
        self._password = password
        self._opened = False

    def location(self) -> str:
        return self.repo.url

    # -- running restic ------------------------------------------------------
    def _argv(self, *args: str) -> list[str]:
        argv = ["restic", "--repo", self.repo.url]
        sftp = self._sftp_command()
        if sftp:
            argv += ["--option", f"sftp.command={sftp}"]
        return [*argv, *args]

    def _sftp_command(self) -> str | None:
        if not self.repo.ssh_config or not self.repo.url.startswith("sftp:"):
            return None
        rest = self.repo.url[len("sftp:"):]
        if rest.startswith("//"):
            parsed = urlparse(self.repo.url)
            host = (f"{parsed.username}@" if parsed.username else "") + (parsed.hostname or "")
            port = ["-p", str(parsed.port)] if parsed.port else []
        else:
            host, port = rest.split(":", 1)[0], []
        # restic splits this on spaces: a path with spaces cannot be said here.
        return " ".join([str(a) for a in ("ssh", "-F", self.repo.ssh_config, *SSH_KEEPALIVE, *port, host,
                                          "-s", "sftp")])

    def _secret_env(self) -> dict[str, str]:
        env = {"RESTIC_PASSWORD": self._password}
        env.update({k: v for k, v in self.env.env.items() if k.startswith(BACKEND_CREDENTIALS)})
        return env

    def _run(self, what: str, *args: str, cwd: Path | None = None,
             timeout: float | None = None, stale_removed: bool = False) -> proc.Result:
        try:
            result = proc.run(self.env, self._argv(*args), cwd=str(cwd) if cwd else None,
                              secret_env=self._secret_env(), check=False,
                              timeout=timeout or self.repo.timeout_seconds,
                              what=f"restic {args[0]}")
        except ExternalError as exc:  # not installed, or timed out
            fix = "install restic (Debian: apt-get install restic)" \
                if "not installed" in exc.message else \
                "the repository host stopped answering; backout retries the copy on its next run"
            cls = RepositoryError if "not installed" in exc.message else RepositoryUnreachableError
            raise cls(f"repository {self.name}: {what}: {exc.message}", fix=fix) from exc
        if not result.ok:
            error = classify(f"repository {self.name}: {what}", self.env.redact(result.stderr))
            if isinstance(error, RepositoryLockedError) and not stale_removed:
                # ``restic unlock`` removes only stale locks (a restic of this host that
                # died, e.g. when the link dropped mid-upload, or one older than 30
                # minutes); a live process's lock stays, and the one retry fails again.
                self._run("removal of stale locks", "unlock", stale_removed=True)
                return self._run(what, *args, cwd=cwd, timeout=timeout, stale_removed=True)
            raise error
        return result

    def _json_lines(self, text: str) -> list[dict[str, Any]]:
        out = []
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def _ensure_initialised(self) -> None:
        if self._opened:
            return
        try:
            self._run("open", "cat", "config", timeout=min(120, self.repo.timeout_seconds))
        except RepositoryMissingError:
            self._run("initialise", "init", "--repository-version", "2")
        self._opened = True

    # -- the Repository protocol ---------------------------------------------
    def put(self, set_dir: Path, completed_at: datetime) -> str:
        self._ensure_initialised()
        stamp = completed_at.astimezone(UTC).strftime(STAMP)
        result = self._run(f"copy of set {set_dir.name}", "backup", "--json",
                           "--tag", TAG, "--tag", f"{SET_TAG}{set_dir.name}",
                           "--tag", f"{COMPLETED_TAG}{stamp}", "--host", "backout",
                           set_dir.name, cwd=set_dir.parent)
        for doc in reversed(self._json_lines(result.stdout)):
            if doc.get("message_type") == "summary" and doc.get("snapshot_id"):
                return str(doc["snapshot_id"])
        raise RepositoryError(f"repository {self.name}: restic backup of {set_dir.name} "
                              "reported no snapshot")

    def check(self, snapshot: str, set_id: str, manifest: bytes,
              sizes: dict[str, int]) -> str:
        back = self.read_file(snapshot, set_id, "manifest.json")
        if back != manifest:
            raise RepositoryError(f"repository {self.name}: the copy of set {set_id} has a "
                                  "different manifest.json than the local set",
                                  fix="copy it again: `backout backups copy`")
        listed = self._run(f"listing of set {set_id}", "ls", "--json", snapshot)
        found = {Path(d["path"]).name: int(d.get("size") or 0)
                 for d in self._json_lines(listed.stdout)
                 if d.get("struct_type") == "node" and d.get("type") == "file"
                 and str(d.get("path", "")).startswith(f"/{set_id}/")}
        for name, size in sizes.items():
            if found.get(name) != size:
                raise RepositoryError(
                    f"repository {self.name}: the copy of set {set_id} has "
                    + (f"no {name}" if name not in found else
                       f"{name} of {found[name]} bytes, the manifest says {size}"),
                    fix="copy it again: `backout backups copy`")
        return (f"manifest read back identical; {len(sizes)} artifact(s) present with the "
                "manifest's sizes")

    def check_repository(self) -> str:
        self._run("check", "check")
        return "restic check: no errors"

    def read_file(self, snapshot: str, set_id: str, name: str) -> bytes:
        result = self._run(f"read-back of {set_id}/{name}", "dump", snapshot, f"/{set_id}/{name}")
        return result.stdout.encode()

    def fetch(self, snapshot: str, set_id: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._run(f"fetch of set {set_id}", "restore", snapshot, "--target", str(dest),
                  "--include", f"/{set_id}")
        fetched = dest / set_id
        if not fetched.is_dir():
            raise RepositoryError(f"repository {self.name}: snapshot {snapshot} holds no set "
                                  f"{set_id}")
        return fetched

    def sets(self) -> list[RemoteSet]:
        result = self._run("list", "snapshots", "--json", "--tag", TAG)
        try:
            snaps = json.loads(result.stdout or "[]") or []
        except ValueError as exc:
            raise RepositoryError(f"repository {self.name}: unreadable snapshot list") from exc
        out = []
        for snap in snaps:
            tags = snap.get("tags") or []
            set_id = next((t[len(SET_TAG):] for t in tags if t.startswith(SET_TAG)), None)
            stamp = next((t[len(COMPLETED_TAG):] for t in tags if t.startswith(COMPLETED_TAG)),
                         None)
            if set_id is None:
                continue
            when = (datetime.strptime(stamp, STAMP).replace(tzinfo=UTC) if stamp else
                    datetime.fromisoformat(snap["time"][:19]).replace(tzinfo=UTC))
            out.append(RemoteSet(set_id, str(snap["id"]), when))
        return out

    def forget(self, snapshots: list[str]) -> None:
        if snapshots:
            self._run("forget", "forget", "--prune", *snapshots)
