"""`backout init`'s derivation from a compose config: pure, table-driven."""

from __future__ import annotations

import tomllib

from backout.setup.generate import derive, health_url, render

COMPOSE = {
    "name": "layra",
    "services": {
        "nginx": {"image": "nginx:1.25", "ports": [{"target": 80, "published": "8090", "host_ip": ""}],
                  "depends_on": {"backend": {}, "frontend": {}}},
        "backend": {
            "image": "layra/backend:1.2.0",
            "ports": [{"target": 8000, "published": "8000", "host_ip": "127.0.0.1"}],
            "healthcheck": {"test": ["CMD", "curl", "-f", "http://localhost:8000/api/v1/health/check"]},
            "depends_on": {"mysql": {"condition": "service_healthy"}, "redis": {}, "mongodb": {}},
            "environment": {"DB_PASSWORD": "pw-app"},
        },
        "frontend": {"image": "layra/frontend:1.2.0",
                     "ports": [{"target": 3000, "published": "3000"}]},
        "model-server": {"image": "layra/model:1", "ports": [{"target": 8005, "published": "8005"}]},
        "worker": {"image": "layra/worker:1"},
        "mysql": {"image": "mysql:8.0",
                  "environment": {"MYSQL_ROOT_PASSWORD": "root-pw-123", "MYSQL_DATABASE": "layra",
                                  "MYSQL_USER": "app", "MYSQL_PASSWORD": "pw-app"}},
        "redis": {"image": "redis:7", "environment": {"REDIS_PASSWORD": "redis-pw-9"}},
        "mongodb": {"image": "mongo:7", "environment": {
            "MONGO_INITDB_ROOT_USERNAME": "admin", "MONGO_INITDB_ROOT_PASSWORD": "mongo-pw-1"}},
    },
}
DOTENV = {"MYSQL_ROOT_PASSWORD": "root-pw-123", "DB_USER": "app", "APP_DB_PASSWORD": "pw-app",
          "REDIS_PASSWORD": "redis-pw-9", "MONGO_ROOT_USER": "admin", "MONGO_PASSWORD": "mongo-pw-1"}


def test_databases_recognised_by_image_with_credential_names() -> None:
    d = derive(COMPOSE, DOTENV)
    assert d.databases["mysql"] == {"type": "mysql", "service": "mysql", "mode": "exec",
                                    "user": "root", "password_env": "MYSQL_ROOT_PASSWORD",
                                    "databases": ["layra"]}
    assert d.databases["redis"]["password_env"] == "REDIS_PASSWORD"
    # names differ between .env and the container: found by value, written by name
    assert d.databases["mongodb"]["password_env"] == "MONGO_PASSWORD"
    assert d.databases["mongodb"]["user_env"] == "MONGO_ROOT_USER"


def test_services_kinds_health_and_writes() -> None:
    d = derive(COMPOSE, DOTENV)
    assert d.services["nginx"]["kind"] == "proxy"
    assert d.services["mysql"] == {"kind": "database"}
    assert d.services["backend"]["health_url"] == "http://127.0.0.1:8000/api/v1/health/check"
    assert d.services["backend"]["writes_to"] == ["mongodb", "mysql", "redis"]
    assert d.services["model-server"]["health_url"] == "http://127.0.0.1:8005/healthy-check"
    assert d.services["frontend"]["health_url"] == "http://127.0.0.1:3000/"
    assert "health_url" not in d.services["worker"]


def test_rendered_file_is_valid_toml_and_holds_no_secret_values() -> None:
    text = render(derive(COMPOSE, DOTENV), ["docker-compose.yml"], ".env")
    for secret in ("root-pw-123", "pw-app", "redis-pw-9", "mongo-pw-1"):
        assert secret not in text
    doc = tomllib.loads(text)
    assert doc["databases"]["mysql"]["password_env"] == "MYSQL_ROOT_PASSWORD"
    assert text.startswith("# backout configuration")


def test_hard_coded_password_is_read_in_the_container_not_copied() -> None:
    compose = {"services": {"db": {"image": "mariadb:11", "environment": {"MARIADB_ROOT_PASSWORD": "inline-pw"}}}}
    d = derive(compose, {})
    assert d.databases["mysql"]["password_container_env"] == "MARIADB_ROOT_PASSWORD"
    assert "password_env" not in d.databases["mysql"]
    assert any("nothing to export" in n for n in d.notes["databases.mysql"])
    assert d.warnings == []
    assert "inline-pw" not in render(d, ["compose.yaml"], None)


def test_health_url_without_published_port() -> None:
    url, how = health_url("worker", {"image": "x"})
    assert url is None and "healthcheck" in how


def test_named_volumes_not_of_a_database_become_commented_examples() -> None:
    compose = {**COMPOSE, "volumes": {"mysql-data": {}, "uploads": {}, "spare": {}}}
    services = dict(compose["services"])  # type: ignore[call-overload]
    services["mysql"] = {**services["mysql"], "volumes": [
        {"type": "volume", "source": "mysql-data", "target": "/var/lib/mysql"}]}
    services["worker"] = {**services["worker"], "volumes": [
        {"type": "volume", "source": "uploads", "target": "/srv/uploads"},
        {"type": "bind", "source": "/etc/hosts", "target": "/etc/hosts"}]}
    compose["services"] = services
    d = derive(compose, DOTENV)
    assert d.volumes == {"spare": {"volume": "spare"},
                         "uploads": {"volume": "uploads", "service": "worker",
                                     "stop_service": False}}
    text = render(d, ["docker-compose.yml"], ".env")
    assert "# [volumes.uploads]" in text and '# service = "worker"' in text
    assert "mysql-data" not in text
    assert "volumes" not in tomllib.loads(text)  # commented out: nothing is backed up unasked
    uncommented = text.replace("# [volumes.", "[volumes.").replace('# volume = "', 'volume = "') \
        .replace('# service = "', 'service = "').replace("# stop_service = ", "stop_service = ")
    assert tomllib.loads(uncommented)["volumes"]["uploads"] == {
        "volume": "uploads", "service": "worker", "stop_service": False}
