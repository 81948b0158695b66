"""init's recognition of database services and of where their credentials come from:
pure, table-driven (engines/images.py, Engine.recognise, setup/generate.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from backout import engines
from backout.engines.images import parse_image, variable_reference
from backout.engines.redis import requirepass_in_conf
from backout.setup.generate import database_type, derive, render

PG = "postgresql"


@pytest.mark.parametrize("image,kind", [
    ("mysql", "mysql"), ("mysql:8.0.27", "mysql"), ("docker.io/library/mysql:8", "mysql"),
    ("mariadb:10-focal", "mysql"), ("mariadb:10.6.4-focal", "mysql"), ("percona:8.0", "mysql"),
    ("percona/percona-server:8.0", "mysql"), ("bitnami/mysql:8.0", "mysql"),
    ("bitnami/mariadb:11.4", "mysql"), ("registry.example.com:5000/bitnami/mysql:latest", "mysql"),
    ("ghcr.io/acme/mirror/mysql@sha256:" + "0" * 64, "mysql"),
    ("backout-test/mariadb:10.11", "mysql"),
    ("mongo", "mongodb"), ("mongo:4.2.0", "mongodb"), ("bitnami/mongodb:7.0", "mongodb"),
    ("quay.io/acme/mongo:7", "mongodb"), ("backout-test/mongo-nx27017:0.8.1", "mongodb"),
    ("redis", "redis"), ("redis:alpine", "redis"), ("bitnami/redis:7.2", "redis"),
    ("redis/redis-stack:latest", "redis"), ("redis/redis-stack-server:7.2.0-v6", "redis"),
    ("redislabs/redismod", "redis"), ("redislabs/rejson:2.0", "redis"),
    ("valkey/valkey:8", "redis"), ("localhost:5000/redis:7", "redis"),
    ("postgres", PG), ("postgres:alpine", PG), ("postgres:12-alpine", PG),
    ("postgis/postgis:15-3.4", PG), ("timescale/timescaledb:latest-pg16", PG),
    ("bitnami/postgresql:16", PG), ("ecr.example/x/postgres:16", PG),
])
def test_engine_images_whatever_the_registry_and_tag(image: str, kind: str) -> None:
    told = database_type("svc", {"image": image})
    assert told is not None and told[0] == kind, told
    assert not told[1].startswith("guessed")


@pytest.mark.parametrize("image", [
    "mongo-express", "mongo-express:1.0", "rediscommander/redis-commander", "oliver006/redis_exporter",
    "redislabs/redisinsight:latest", "prom/mysqld-exporter", "phpmyadmin", "adminer",
    "dpage/pgadmin4:latest", "nginx", "mcr.microsoft.com/azure-sql-edge:1.0.4",
    "elasticsearch:7.16.1", "gitea/gitea:latest", "nextcloud:apache", "wordpress:latest",
    "postgrest/postgrest", "bitnami/redis-sentinel", "bitnami/mysqld-exporter",
])
def test_tools_named_after_a_database_are_not_one(image: str) -> None:
    assert database_type("svc", {"image": image}) is None


def test_guessed_from_what_runs_inside_and_said_so() -> None:
    by_command = database_type("cache", {"image": "acme/app:1",
                                         "command": ["redis-server", "--appendonly", "yes"]})
    assert by_command == ("redis", "guessed: the container runs or has redis-server")
    by_container = database_type("store", {"image": "acme/custom:3"}, ["mariadbd"])
    assert by_container == ("mysql", "guessed: the container runs or has mariadbd")
    valkey = database_type("kv", {"image": "acme/kv"}, ["valkey-server"])
    assert valkey is not None and valkey[0] == "redis"
    mongo = database_type("docs", {"build": {"context": "."}}, ["mongod"])
    assert mongo is not None and mongo[0] == "mongodb"
    pg = database_type("sql", {"image": "acme/pg-custom"}, ["postgres"])
    assert pg is not None and pg[0] == PG and pg[1].startswith("guessed")
    by_name = database_type("redis", {"build": {"context": "."}})
    assert by_name == ("redis", "guessed from the service name 'redis'")
    assert database_type("app", {"image": "acme/app:1"}, ["python3"]) is None


@pytest.mark.parametrize("ref,registry,repository,tag", [
    ("mysql", None, "mysql", None),
    ("MySQL:8", None, "mysql", "8"),
    ("docker.io/library/redis:7", None, "redis", "7"),
    ("localhost:5000/team/redis", "localhost:5000", "team/redis", None),
    ("registry.example.com:5000/bitnami/mysql:8.0@sha256:ab", "registry.example.com:5000",
     "bitnami/mysql", "8.0"),
    ("ghcr.io/acme/postgres", "ghcr.io", "acme/postgres", None),
])
def test_parse_image(ref: str, registry: str | None, repository: str, tag: str | None) -> None:
    parsed = parse_image(ref)
    assert (parsed.registry, parsed.repository, parsed.tag) == (registry, repository, tag)


@pytest.mark.parametrize("value,name", [
    ("${DB_PASSWORD}", "DB_PASSWORD"), ("$DB_PASSWORD", "DB_PASSWORD"),
    ("${DB_PASSWORD:-changeme}", "DB_PASSWORD"), ("${DB_PASSWORD:?set it}", "DB_PASSWORD"),
    (" ${X} ", "X"), ("pre-${X}", None), ("${X}${Y}", None), ("literal", None), (None, None),
    ("$$X", None),
])
def test_variable_reference(value: str | None, name: str | None) -> None:
    assert variable_reference(value) == name


def mysql(env: dict[str, str] | list[str], raw: dict[str, str] | list[str] | None = None,
          env_values: dict[str, str] | None = None) -> tuple[dict[str, object], list[str]]:
    """derive() on one MariaDB service: its entry and notes."""
    compose = {"services": {"db": {"image": "mariadb:11", "environment": env}}}
    raw_doc = {"services": {"db": {"image": "mariadb:11", "environment": raw}}} \
        if raw is not None else None
    d = derive(compose, env_values or {}, raw_doc)
    return d.databases["mysql"], d.notes["databases.mysql"] + d.warnings


def test_a_variable_of_the_env_file_is_referenced_by_its_name() -> None:
    entry, notes = mysql({"MYSQL_ROOT_PASSWORD": "s3cret"},
                         {"MYSQL_ROOT_PASSWORD": "${DB_ROOT_PW}"}, {"DB_ROOT_PW": "s3cret"})
    assert entry["password_env"] == "DB_ROOT_PW" and entry["user"] == "root"
    assert any("DB_ROOT_PW from the .env" in n for n in notes)


def test_a_referenced_variable_set_nowhere_falls_back_to_the_container() -> None:
    entry, notes = mysql({"MYSQL_ROOT_PASSWORD": "fallback"},
                         {"MYSQL_ROOT_PASSWORD": "${DB_ROOT_PW:-fallback}"}, {})
    assert entry["password_container_env"] == "MYSQL_ROOT_PASSWORD"
    assert "password_env" not in entry
    assert any("${DB_ROOT_PW} is set in neither" in n for n in notes)


def test_a_literal_is_the_containers_own_variable_list_form_too() -> None:
    entry, notes = mysql(["MYSQL_ROOT_PASSWORD=literal-pw", "MYSQL_DATABASE=app"],
                         ["MYSQL_ROOT_PASSWORD=literal-pw", "MYSQL_DATABASE=app"])
    assert entry["password_container_env"] == "MYSQL_ROOT_PASSWORD"
    assert entry["databases"] == ["app"]
    assert any("a literal in the compose file" in n for n in notes)


def test_a_docker_secret_is_read_inside_the_container() -> None:
    entry, _notes = mysql({"MYSQL_ROOT_PASSWORD_FILE": "/run/secrets/db-password"},
                          {"MYSQL_ROOT_PASSWORD_FILE": "/run/secrets/db-password"})
    assert entry["password_container_env"] == "MYSQL_ROOT_PASSWORD_FILE"


def test_without_root_the_application_user_with_its_privileges_noted() -> None:
    env = {"MYSQL_RANDOM_ROOT_PASSWORD": "yes", "MYSQL_USER": "app",
           "MYSQL_PASSWORD": "app-pw", "MYSQL_DATABASE": "shop"}
    raw = {**env, "MYSQL_PASSWORD": "${APP_DB_PASSWORD}"}
    entry, notes = mysql(env, raw, {"APP_DB_PASSWORD": "app-pw"})
    assert entry["user"] == "app" and entry["password_env"] == "APP_DB_PASSWORD"
    assert any("not root" in n and "privileges" in n for n in notes)
    user_from_env, _ = mysql({**env, "MYSQL_USER": "app"}, {**raw, "MYSQL_USER": "${APP_USER}"},
                             {"APP_DB_PASSWORD": "app-pw", "APP_USER": "app"})
    assert user_from_env["user_env"] == "APP_USER" and "user" not in user_from_env


def redis(command: object, volumes: list[dict[str, str]] | None = None,
          env_values: dict[str, str] | None = None, raw_command: object = None
          ) -> tuple[dict[str, object], list[str], list[str]]:
    spec = {"image": "redis:7", "command": command, "volumes": volumes or []}
    raw = {"image": "redis:7", "command": raw_command if raw_command is not None else command}
    d = derive({"services": {"cache": spec}}, env_values or {}, {"services": {"cache": raw}})
    return d.databases["redis"], d.notes["databases.redis"], d.warnings


def test_requirepass_from_a_variable_in_the_command() -> None:
    entry, _notes, warnings = redis(["redis-server", "--requirepass", "pw"],
                                   env_values={"REDIS_PASSWORD": "pw"},
                                   raw_command=["redis-server", "--requirepass", "${REDIS_PASSWORD}"])
    assert entry["password_env"] == "REDIS_PASSWORD" and warnings == []
    as_string, _, _ = redis("redis-server --appendonly yes --requirepass pw",
                            env_values={"CACHE_PW": "pw"},
                            raw_command="redis-server --appendonly yes --requirepass $CACHE_PW")
    assert as_string["password_env"] == "CACHE_PW"
    unset, _, warnings = redis(["redis-server", "--requirepass", ""],
                               raw_command=["redis-server", "--requirepass", "${REDIS_PASSWORD}"])
    assert unset["password_env"] == "REDIS_PASSWORD"
    assert warnings == ["databases.redis: requirepass comes from ${REDIS_PASSWORD}, which is set "
                        "in neither .env nor the environment: set REDIS_PASSWORD (Redis gets an "
                        "empty password otherwise)"]


def test_a_literal_requirepass_is_not_copied_and_the_fix_is_named() -> None:
    entry, _notes, warnings = redis(["redis-server", "--requirepass", "hunter2"])
    assert not any(k.startswith("password") for k in entry)
    assert len(warnings) == 1 and "REDIS_PASSWORD" in warnings[0] and "hunter2" not in warnings[0]


def test_requirepass_of_a_mounted_redis_conf(tmp_path: Path) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text("port 6379\nrequirepass \"from-conf\"\n")
    entry, notes, warnings = redis(
        ["redis-server", "/usr/local/etc/redis/redis.conf"],
        [{"type": "bind", "source": str(conf), "target": "/usr/local/etc/redis/redis.conf"}])
    assert entry["password_container_file"] == "/usr/local/etc/redis/redis.conf"
    assert warnings == []
    conf.write_text("port 6379\n")
    entry, notes, _ = redis(
        ["redis-server", "/usr/local/etc/redis/redis.conf"],
        [{"type": "bind", "source": str(conf), "target": "/usr/local/etc/redis/redis.conf"}])
    assert "password_container_file" not in entry
    assert any("none in the compose file" in n for n in notes)


@pytest.mark.parametrize("text,password", [
    ("requirepass plain\n", "plain"),
    ("# requirepass commented\nrequirepass \"with \\\"quote\\\" and \\\\\"\n", 'with "quote" and \\'),
    ("requirepass 'single $x'\n", "single $x"),
    ("requirepass first\nREQUIREPASS second\n", "second"),
    ("port 1\n", None),
])
def test_requirepass_in_conf(text: str, password: str | None) -> None:
    assert requirepass_in_conf(text) == password


def test_no_secret_value_in_the_rendered_file() -> None:
    compose = {"services": {
        "db": {"image": "bitnami/mariadb", "environment": {
            "MARIADB_ROOT_PASSWORD": "lit-sentinel-1", "MARIADB_USER": "u",
            "MARIADB_PASSWORD": "lit-sentinel-2"}},
        "kv": {"image": "redis", "command": ["redis-server", "--requirepass", "env-sentinel-3"]},
        "docs": {"image": "bitnami/mongodb", "environment": {
            "MONGO_INITDB_ROOT_USERNAME": "root", "MONGO_INITDB_ROOT_PASSWORD_FILE": "/run/s"}}}}
    raw = {"services": {
        "db": compose["services"]["db"],
        "kv": {"image": "redis", "command": ["redis-server", "--requirepass", "${KV_PW}"]},
        "docs": compose["services"]["docs"]}}
    d = derive(compose, {"KV_PW": "env-sentinel-3"}, raw)
    text = render(d, ["compose.yaml"], ".env")
    for secret in ("lit-sentinel-1", "lit-sentinel-2", "env-sentinel-3"):
        assert secret not in text
    doc = tomllib.loads(text)["databases"]
    assert doc["mysql"]["password_container_env"] == "MARIADB_ROOT_PASSWORD"
    assert doc["redis"]["password_env"] == "KV_PW"
    assert doc["mongodb"]["password_container_env"] == "MONGO_INITDB_ROOT_PASSWORD_FILE"


def test_a_database_of_an_engine_this_build_lacks_is_named_not_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Recognition of an engine not in the table (PostgreSQL before its engine is
    merged): a true warning naming the service, a commented section, no [databases]."""
    monkeypatch.setattr(engines, "ENGINES", {k: v for k, v in engines.ENGINES.items() if k != PG})
    d = derive({"services": {"db": {"image": "postgis/postgis:16-3.4"}}}, {})
    assert d.databases == {} and d.pending == [("db", PG, "image postgis/postgis")]
    assert d.warnings and "no postgresql engine" in d.warnings[0] and "NOT checkpointed" in d.warnings[0]
    text = render(d, ["compose.yaml"], None)
    assert "# [databases.postgresql-db]" in text and "databases" not in tomllib.loads(text)


def test_bitnami_variables() -> None:
    compose = {"services": {
        "m": {"image": "bitnami/mongodb:7", "environment": {"MONGODB_ROOT_PASSWORD": "x"}},
        "v": {"image": "bitnami/valkey:8", "environment": {"VALKEY_PASSWORD": "${VK}"}},
        "r": {"image": "bitnami/redis:7", "environment": {"REDIS_PASSWORD_FILE": "/run/s/p"}}}}
    d = derive(compose, {"VK": "y"}, compose)
    assert d.databases["mongodb"]["user"] == "root"
    assert d.databases["mongodb"]["password_container_env"] == "MONGODB_ROOT_PASSWORD"
    by_service = {e["service"]: e for e in d.databases.values()}
    assert by_service["v"]["password_env"] == "VK"
    assert by_service["r"]["password_container_env"] == "REDIS_PASSWORD_FILE"


def test_bitnami_postgresql_prefers_the_superuser() -> None:
    """bitnami/postgresql: POSTGRESQL_USERNAME owns one database only; its superuser
    (postgres) has POSTGRESQL_POSTGRES_PASSWORD. With both, the superuser is used;
    with only the application user, init says what a full restore needs."""
    both = {"services": {"pg": {"image": "bitnami/postgresql:16", "environment": {
        "POSTGRESQL_USERNAME": "app", "POSTGRESQL_PASSWORD": "${APP_PW}",
        "POSTGRESQL_POSTGRES_PASSWORD": "${ROOT_PW}", "POSTGRESQL_DATABASE": "shop"}}}}
    d = derive(both, {"APP_PW": "a", "ROOT_PW": "r"}, both)
    [entry] = d.databases.values()
    assert entry["user"] == "postgres" and entry["password_env"] == "ROOT_PW"
    assert entry["databases"] == ["shop"]
    app_only = {"services": {"pg": {"image": "bitnami/postgresql:16", "environment": {
        "POSTGRESQL_USERNAME": "app", "POSTGRESQL_PASSWORD": "${APP_PW}"}}}}
    d = derive(app_only, {"APP_PW": "a"}, app_only)
    [entry] = d.databases.values()
    assert entry["user"] == "app" and entry["password_env"] == "APP_PW"
    notes = [n for ns in d.notes.values() for n in ns]
    assert any("POSTGRESQL_POSTGRES_PASSWORD" in n and "not root" in n for n in notes), notes
