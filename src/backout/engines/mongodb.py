"""MongoDB through the official driver (pymongo), reached on the service's port, or
through ``mongodump`` inside its container when the container has it.

Only a wire-protocol stand-in (nx-27017) runs on our CI machines; results that
depend on server behaviour are labelled as such in the docs and tests.
"""

from __future__ import annotations

import json
from typing import Any

from backout import proc
from backout.engines.access import EngineAccess
from backout.errors import ExternalError

SYSTEM_DATABASES = {"admin", "local", "config"}


class MongoDB:
    def __init__(self, access: EngineAccess) -> None:
        self.access = access
        self._client: Any = None

    def address(self) -> tuple[str, int]:
        db = self.access.db
        if db.port is not None:
            return db.host, db.port
        # exec mode without a configured port: ask the platform where 27017 is published
        text = self.access.platform.published_address(db.service, 27017) or ""
        if ":" not in text:
            raise ExternalError(f"{db.name}: no published port for {db.service}:27017 and no "
                                "mongodump in the container",
                                fix=f"publish 27017 or set databases.{db.name}.port")
        host, _, port = text.rpartition(":")
        return ("127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host), int(port)

    def client(self) -> Any:
        if self._client is None:
            from pymongo import MongoClient

            host, port = self.address()
            user = self.access.user()
            password = self.access.password()
            kwargs: dict[str, Any] = {"serverSelectionTimeoutMS": 10000, "directConnection": True}
            if user and password:
                kwargs.update(username=user, password=password, authSource="admin")
            self._client = MongoClient(host, port, **kwargs)
        return self._client

    def ping(self) -> str:
        from pymongo.errors import OperationFailure, PyMongoError

        try:
            self.client().admin.command("ping")
            info = self.client().server_info()
        except OperationFailure as exc:
            if exc.code in (13, 18):
                var = self.access.db.password_env or "the password"
                raise ExternalError(f"{self.access.db.name}: authentication failed",
                                    fix=f"check {var}") from exc
            raise ExternalError(f"{self.access.db.name}: {exc}") from exc
        except PyMongoError as exc:
            raise ExternalError(f"{self.access.db.name}: database unreachable: "
                                f"{self.access.env.redact(str(exc))[:200]}",
                                fix=f"check that {self.access.db.service} is up") from exc
        return str(info.get("version", "unknown"))

    def user_databases(self) -> list[str]:
        names = self.client().list_database_names()
        return sorted(n for n in names if n not in SYSTEM_DATABASES)

    def collections(self, database: str) -> list[str]:
        db = self.client()[database]
        out = []
        for spec in db.list_collections():
            if spec.get("type", "collection") == "collection" and not spec["name"].startswith("system."):
                out.append(spec["name"])
        return sorted(out)

    def data_bytes(self, databases: list[str]) -> int | None:
        """The BSON size of the documents (dbStats dataSize), or None when the server
        will not say (the stand-in may not)."""
        try:
            return sum(int(self.client()[d].command("dbStats").get("dataSize", 0))
                       for d in databases) or None
        except Exception:  # a progress estimate only: never fail a backup for it
            return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# The dump inside the container: mongodump writes its directory layout into a
# private temporary directory, which is streamed out as a tar (the same artifact
# the driver path makes) and removed on exit. The connection string with the
# password arrives on stdin and goes into a 0600 --config file, never into argv.
MONGODUMP_SCRIPT = r"""set -eu
d=$(mktemp -d /tmp/backout-mongodump.XXXXXX)
trap 'rm -rf "$d"' EXIT
umask 077
cat > "$d/config.yaml"
if [ "$#" -eq 0 ]; then
  mongodump --quiet --config="$d/config.yaml" --out="$d/dump" >&2
  rm -rf "$d/dump/admin" "$d/dump/config" "$d/dump/local"
else
  for db in "$@"; do
    mongodump --quiet --config="$d/config.yaml" --db="$db" --out="$d/dump" >&2
  done
fi
mkdir -p "$d/dump"
tar -C "$d" -cf - dump
"""
MONGODUMP_PROBE = "command -v mongodump >/dev/null 2>&1 || exit 3; mongodump --version 2>&1"
NOT_FOUND = 3


class MongoDump:
    """``mongodump`` inside the MongoDB container (exec mode only)."""

    def __init__(self, access: EngineAccess) -> None:
        self.access = access

    def version(self) -> str | None:
        """mongodump's version line when it exists in the container, else None."""
        if self.access.db.mode != "exec":
            return None
        result = proc.run(self.access.env, self.access.argv(["sh", "-c", MONGODUMP_PROBE]),
                          timeout=60, check=False, what="mongodump probe",
                          cwd=str(self.access.config.project_dir))
        if result.returncode == NOT_FOUND:
            return None
        if not result.ok:
            raise self.access.explain(result, "mongodump probe")
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        return lines[0] if lines else "mongodump (version unknown)"

    def uri(self) -> str:
        """The connection string for the --config file (holds the password)."""
        from urllib.parse import quote

        user = self.access.user()
        password = self.access.password()
        if user and password:
            encoded = quote(password, safe="")
            self.access.env.redact.add(encoded)
            return (f"mongodb://{quote(user, safe='')}:{encoded}@127.0.0.1:27017/"
                    "?authSource=admin")
        return "mongodb://127.0.0.1:27017/"

    def config_file(self) -> bytes:
        """YAML for ``mongodump --config``: a JSON string is a YAML double-quoted scalar."""
        return f"uri: {json.dumps(self.uri())}\n".encode()

    def argv(self, databases: list[str]) -> list[str]:
        """Where the database's container runs the script; db names are its arguments."""
        return self.access.argv(["sh", "-c", MONGODUMP_SCRIPT, "backout-mongodump", *databases])

    def server_version(self) -> str:
        result = proc.run(self.access.env, self.access.argv(
            ["sh", "-c", "mongod --version 2>/dev/null | head -n 1"]), timeout=60, check=False,
            what="mongod --version", cwd=str(self.access.config.project_dir))
        text = result.stdout.strip()
        return text.removeprefix("db version ").lstrip("v") if result.ok and text else "unknown"
