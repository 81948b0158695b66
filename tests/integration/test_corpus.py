"""`backout init` on real public compose files: the awesome-compose corpus.

The corpus (39 sample stacks, CC0) is an input of the tests, never part of the
repository: it is read from ``../shared/corpus/awesome-compose`` (next to the
checkout, as on CI) or ``/work/shared/corpus/awesome-compose``, or from
$BACKOUT_CORPUS_DIR. Each stack is copied into a temporary directory (init writes
backout.toml beside the compose file), then, in-process through the CLI's main():

- `backout init --json` exits 0, or 1 with warnings that are all expected below
  (each true and naming its fix);
- it recognises exactly the database services a person would (EXPECTED), with the
  credential source written in the table (by name: a .env variable, the
  container's own variable or secret, or none);
- no secret value of the stack (its literals, .env values, secret files) appears
  in backout.toml or in init's output;
- `backout config check` passes on what init wrote.

Compose itself is run (``docker compose config``), so the test is marked docker;
the stacks are never started here (see test_corpus_roundtrip.py for that).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout import engines
from backout.cli.main import main

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = [Path(p) for p in filter(None, [os.environ.get("BACKOUT_CORPUS_DIR")])] + [
    REPO.parent / "shared" / "corpus" / "awesome-compose",
    Path("/work/shared/corpus/awesome-compose"),
]
CORPUS = next((p for p in CANDIDATES if p.is_dir()), None)

PG = "postgresql"  # type of the PostgreSQL engine (issue 13, part A)
# A source of credentials, as init writes it: "<key>:<NAME>", or "none".
FILE_SECRET = "password_container_env:MYSQL_ROOT_PASSWORD_FILE"
ROOT_LITERAL = "password_container_env:MYSQL_ROOT_PASSWORD"

# stack -> {service: (engine type, credential source)}. What a person reading the
# compose file sees: the services that hold data in a database server backout has
# an engine for. (aspnet-mssql's SQL Server and the ELK stack's Elasticsearch are
# data stores without an engine: not counted, and init says nothing false about them.)
EXPECTED: dict[str, dict[str, tuple[str, str]]] = {
    "angular": {}, "apache-php": {}, "aspnet-mssql": {}, "django": {},
    "elasticsearch-logstash-kibana": {}, "fastapi": {}, "flask": {},
    "flask-redis": {"redis": ("redis", "none")},
    "gitea-postgres": {"db": (PG, "password_container_env:POSTGRES_PASSWORD")},
    "minecraft": {},
    "nextcloud-postgres": {"db": (PG, "password_container_env:POSTGRES_PASSWORD")},
    "nextcloud-redis-mariadb": {"db": ("mysql", ROOT_LITERAL), "redis": ("redis", "none")},
    "nginx-aspnet-mysql": {"db": ("mysql", FILE_SECRET)},
    "nginx-flask-mongo": {"mongo": ("mongodb", "none")},
    "nginx-flask-mysql": {"db": ("mysql", FILE_SECRET)},
    "nginx-golang": {},
    "nginx-golang-mysql": {"db": ("mysql", FILE_SECRET)},
    "nginx-golang-postgres": {"db": (PG, "password_container_env:POSTGRES_PASSWORD_FILE")},
    "nginx-nodejs-redis": {"redis": ("redis", "none")},
    "nginx-wsgi-flask": {}, "pihole-cloudflared-DoH": {}, "plex": {}, "portainer": {},
    "postgresql-pgadmin": {"postgres": (PG, "password_env:POSTGRES_PW")},
    "prometheus-grafana": {},
    "react-express-mongodb": {"mongo": ("mongodb", "none")},
    "react-express-mysql": {"db": ("mysql", FILE_SECRET)},
    "react-java-mysql": {"db": ("mysql", FILE_SECRET)},
    "react-nginx": {},
    "react-rust-postgres": {"db": (PG, "password_container_env:POSTGRES_PASSWORD")},
    "sparkjava": {},
    "sparkjava-mysql": {"db": ("mysql", FILE_SECRET)},
    "spring-postgres": {"db": (PG, "password_container_env:POSTGRES_PASSWORD_FILE")},
    "traefik-golang": {}, "vuejs": {},
    "wasmedge-kafka-mysql": {"db": ("mysql", ROOT_LITERAL)},
    "wasmedge-mysql-nginx": {"db": ("mysql", ROOT_LITERAL)},
    "wireguard": {},
    "wordpress-mysql": {"db": ("mysql", ROOT_LITERAL)},
}
CREDENTIAL_KEYS = ("password_env", "password_file", "password_container_env",
                   "password_container_file")
# The one warning a stack may get on a build without the PostgreSQL engine: true (its
# data is not checkpointed) and naming what to do.
PENDING_WARNING = re.compile(r"^services\.(\S+): a postgresql database \(image [^)]+\), but "
                             r"this build of backout has no postgresql engine: its data is NOT "
                             r"checkpointed \(use a backout with the postgresql engine, or back "
                             r"it up another way\)$")


def stacks() -> list[str]:
    return sorted(EXPECTED)


@pytest.fixture(scope="module")
def corpus() -> Path:
    if CORPUS is None:
        pytest.skip("the awesome-compose corpus is absent (looked in "
                    + ", ".join(str(p) for p in CANDIDATES) + "); set BACKOUT_CORPUS_DIR")
    return CORPUS


def test_the_table_covers_the_corpus(corpus: Path) -> None:
    present = sorted(p.name for p in corpus.iterdir() if p.is_dir())
    assert present == stacks()
    assert len(present) == 39
    with_database = [s for s, dbs in EXPECTED.items() if dbs]
    assert len(with_database) == 20


_LITERAL = re.compile(r"(?m)^([ \t]*-?[ \t]*\"?[A-Z0-9_]*(?:PASSWORD|PASS|PW|SECRET|TOKEN)"
                      r"[A-Z0-9_]*\"?[ \t]*[:=][ \t]*['\"]?)([^'\"\s#$][^'\"\s#]*)")


def plant_sentinels(stack_dir: Path, compose: Path) -> set[str]:
    """Replace every secret of the copied stack by a unique value that can only
    come from there (the corpus uses words like "wordpress", which are also service
    names): literal values of password-like variables in the compose file, .env
    values of such variables, secret files. Returns the values planted."""
    planted: dict[str, str] = {}

    def sentinel(value: str) -> str:
        return planted.setdefault(value, f"sentinel-{len(planted)}-{os.urandom(6).hex()}")

    def literal(m: re.Match[str]) -> str:
        if m.group(2).startswith("/run/secrets"):
            return m.group(0)
        return m.group(1) + sentinel(m.group(2))

    compose.write_text(_LITERAL.sub(literal, compose.read_text()))
    env = stack_dir / ".env"
    if env.is_file():
        lines = []
        for line in env.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and value.strip() and re.search("PASS|PW|SECRET|TOKEN", key):
                line = f"{key}={sentinel(value.strip())}"
            lines.append(line)
        env.write_text("\n".join(lines) + "\n")
    for path in stack_dir.rglob("*password*.txt"):
        path.write_text(sentinel(path.read_text().strip()) + "\n")
    return set(planted.values())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else {}), out + err


@pytest.fixture()
def copied(corpus: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    name = request.node.callspec.params["stack"]
    target = tmp_path / name
    shutil.copytree(corpus / name, target, symlinks=True)
    yield target


@pytest.mark.parametrize("stack", stacks())
def test_init_on_a_corpus_stack(stack: str, copied: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    compose = next(p for p in copied.iterdir() if re.fullmatch(r"(docker-)?compose\.ya?ml", p.name))
    secrets_ = plant_sentinels(copied, compose)
    code, data, text = run(capsys, "init", "--project-dir", str(copied))
    expected = EXPECTED[stack]
    pg_ready = PG in engines.names()
    want_pending = {s for s, (kind, _src) in expected.items() if kind == PG and not pg_ready}

    # exit 0, or 1 with only true, actionable warnings
    assert code in (0, 1), text
    warnings = data["warnings"]
    pending_named = {m.group(1) for w in warnings if (m := PENDING_WARNING.match(w))}
    assert pending_named == want_pending, warnings
    assert len(warnings) == len(want_pending), warnings
    assert code == (1 if want_pending else 0), text

    # exactly the database services a person would see, with their types
    written = (copied / "backout.toml").read_text()
    doc = tomllib.loads(written)
    got = {d["service"]: d["type"] for d in doc.get("databases", {}).values()}
    assert got == {s: k for s, (k, _src) in expected.items() if s not in want_pending}
    assert data["unsupported"] == {s: PG for s in want_pending}
    assert set(data["databases"]) == set(doc.get("databases", {}))

    # the credential source, by name (never a value)
    for entry in doc.get("databases", {}).values():
        sources = [f"{k}:{entry[k]}" for k in CREDENTIAL_KEYS if k in entry]
        assert sources == ([] if expected[entry["service"]][1] == "none"
                           else [expected[entry["service"]][1]]), entry
        if expected[entry["service"]][1] == "none":
            assert "password: none in the compose file" in written
        else:
            assert "# password: " in written

    # no secret value anywhere init wrote or said
    for value in secrets_:
        assert value not in written, f"{value!r} copied into backout.toml"
        assert value not in text, f"{value!r} in init's output"

    # what init wrote passes the config check
    code, data, text = run(capsys, "config", "check", "--project-dir", str(copied))
    assert code == 0, text
    assert data["valid"] is True
    assert sorted(data["databases"]) == sorted(doc.get("databases", {}))
