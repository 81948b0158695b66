"""MongoDB through the official driver (pymongo), reached on the service's port.

Only a wire-protocol stand-in (nx-27017) runs on our CI machines; results that
depend on server behaviour are labelled as such in the docs and tests.
"""

from __future__ import annotations

from typing import Any

from backout.adapters.dbaccess import DbAccess
from backout.errors import ExternalError

SYSTEM_DATABASES = {"admin", "local", "config"}


class MongoDB:
    def __init__(self, access: DbAccess) -> None:
        self.access = access
        self._client: Any = None

    def address(self) -> tuple[str, int]:
        db = self.access.db
        if db.port is not None:
            return db.host, db.port
        # exec mode without a configured port: ask compose where 27017 is published
        result = self.access.compose.run("port", db.service, "27017", check=False,
                                         what="docker compose port")
        text = result.stdout.strip()
        if not result.ok or ":" not in text:
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

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
