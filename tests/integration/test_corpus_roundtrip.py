"""Round trips on the database services of corpus stacks, started with local
stand-ins of their images (tests/support/standins.py): `backout init` as written
for the stack, then checkpoint -> damage -> `rollback db` -> exactly the data of the
checkpoint. Every password is a sentinel planted in the copy (a Docker secret file,
the compose file's literal, the .env): it must appear in no argv (watched in
/proc while backout runs), no output, not in backout.toml nor the state directory.

- nginx-flask-mysql: MySQL (MariaDB stand-in) with MYSQL_ROOT_PASSWORD_FILE (a secret),
  its container given an Oracle MySQL image's client tools (mysqldump, mysql only)
- wordpress-mysql: MariaDB with a literal MYSQL_ROOT_PASSWORD in the compose file, its
  container given a MariaDB 11 image's tools (mariadb-dump, mariadb only); and its
  MYSQL_USER as the only credential (a non-root user), then a SELECT-only user refused
- react-express-mongodb: the MongoDB stand-in (nx-27017: a wire-protocol server,
  NOT MongoDB; no mongodump, so the override publishes its port)
- flask-redis: Redis (redislabs/redismod) without a password, its data in the image's
  anonymous VOLUME (the compose file declares none)
- the runbook's Redis: `command: ["redis-server", "--requirepass", "${REDIS_PASSWORD}"]`
  with the password in .env (not a corpus file: the corpus has none such); this one
  is in the default suite, as is an image named after nothing recognised by what
  runs inside; the corpus stacks are soak (about 5 minutes here).
(PostgreSQL's corpus round trip comes with its engine, issue 13 part A.)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_backups import CmdlineWatcher
from tests.integration.test_corpus import CORPUS
from tests.support.cli import backout, ok, ok_json
from tests.support.standins import (
    MARIADB_STANDIN,
    MONGO_STANDIN,
    REDIS_STANDIN,
    CorpusStack,
    build_standins,
    tag_as,
    untag_all,
)

pytestmark = pytest.mark.docker
# Processes of the stacks themselves that show a password in their argv because the
# compose file puts it there (not backout's doing): the runbook's Redis command line,
# nginx-flask-mysql's healthcheck (`mysqladmin ping --password="$(cat ...)"`).
CONTAINERS_OWN = ("/bin/bash /usr/local/bin/docker-entrypoint.sh redis-server --requirepass",
                  "redis-server /run/redis/redis.conf --requirepass", "setpriv --reuid=redis",
                  "mysqladmin ping -h 127.0.0.1 --password=")


@pytest.fixture(scope="module")
def standins() -> Iterator[None]:
    build_standins()
    yield
    untag_all()


def corpus_dir(name: str) -> Path:
    if CORPUS is None:
        pytest.skip("the awesome-compose corpus is absent (see test_corpus.py)")
    return CORPUS / name


def sentinel() -> str:
    # quotes, a dollar, a space and a backslash: each must survive every hop as is
    return f"sent'{secrets.token_hex(6)} $x\"y\\z"


def run_round_trip(stack: CorpusStack, database: str, seed: object, damage: object,
                   read: object, sentinels: list[str], expect_source: tuple[str, str]) -> None:
    """init -> config check -> seed -> checkpoint -> damage -> rollback db -> exact data."""
    assert callable(seed) and callable(damage) and callable(read)
    env = stack.env
    init = backout("init", "--json", cwd=stack.dir, **env)
    assert init.returncode == 0, (init.stdout, init.stderr)
    doc = tomllib.loads((stack.dir / "backout.toml").read_text())
    key, name = expect_source
    assert doc["databases"][database][key] == name, doc["databases"][database]
    stack.use_override_in_config()
    ok(backout("config", "check", cwd=stack.dir, **env))
    seed()
    expected = read()
    watcher = CmdlineWatcher([s.encode() for s in sentinels], ())
    watcher.start()
    try:
        checkpoint = ok_json(backout("checkpoint", "--json", "--verbose", cwd=stack.dir, **env))
        damage()
        assert read() != expected, "the damage changed nothing: the test would prove nothing"
        rollback = backout("rollback", "db", database, "cp1", "--yes", "--json", "--verbose",
                           cwd=stack.dir, **env)
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)
    data = ok_json(rollback)
    assert read() == expected
    # every process but the stack's own (CONTAINERS_OWN) must not have it
    leaks = [hit for hit in watcher.hits if not hit.startswith(CONTAINERS_OWN)]
    assert watcher.rounds > 5 and leaks == [], leaks
    texts = {"init": init.stdout + init.stderr, "checkpoint": json.dumps(checkpoint),
             "rollback": rollback.stdout + rollback.stderr,
             "backout.toml": (stack.dir / "backout.toml").read_text()}
    state = {str(p): p.read_bytes() for p in (stack.dir / ".backout").rglob("*")
             if p.is_file() and not p.name.endswith(".zst")}
    for secret in sentinels:
        for where, text in texts.items():
            assert secret not in text, f"a password appears in {where}"
        for where, blob in state.items():
            assert secret.encode() not in blob, f"a password appears in {where}"
    assert data["ok"] is True


# ------------------------------------------------------------------ MySQL / MariaDB

ROOT_SQL = ('p="${MYSQL_ROOT_PASSWORD:-}"; '
            '[ -n "${MYSQL_ROOT_PASSWORD_FILE:-}" ] && p=$(cat "$MYSQL_ROOT_PASSWORD_FILE"); '
            'c=$(command -v mariadb || command -v mysql); '
            'MYSQL_PWD="$p" exec "$c" -uroot --batch --skip-column-names "$@"')
APP_SQL = ('c=$(command -v mariadb || command -v mysql); '
           'MYSQL_PWD="$MYSQL_PASSWORD" exec "$c" -u"$MYSQL_USER" --batch --skip-column-names "$@"')
# The client tools of an Oracle MySQL image (mysqldump, mysql only) and of a MariaDB 11
# image (mariadb-dump, mariadb only), made in the stand-in's running container: backout
# must pick whichever is there.
ORACLE_LAYOUT = ("cd /usr/bin && rm mysqldump mysql && mv mariadb-dump mysqldump "
                 "&& mv mariadb mysql")
MARIADB11_LAYOUT = "cd /usr/bin && rm mysqldump mysql"


def mysql_case(stack: CorpusStack, database: str, client: str = ROOT_SQL
               ) -> tuple[object, object, object]:
    def sql(statement: str) -> str:
        return stack.exec("db", "sh", "-c", client, "sh", database, "-e", statement)

    def seed() -> None:
        values = ", ".join(f"({i}, '{secrets.token_hex(8)}-é-{i}')" for i in range(1, 201))
        sql("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(64) CHARACTER SET utf8mb4);"
            f"INSERT INTO items VALUES {values};"
            "CREATE VIEW recent AS SELECT id FROM items WHERE id > 150;")

    def damage() -> None:
        sql("DELETE FROM items WHERE id <= 50; UPDATE items SET v = 'changed' WHERE id > 190;"
            "INSERT INTO items VALUES (1000, 'after the checkpoint'); DROP VIEW recent;")

    def read() -> str:
        return sql("SELECT id, v FROM items ORDER BY id; SELECT table_name FROM "
                   "information_schema.views WHERE table_schema = DATABASE();")

    return seed, damage, read


@pytest.mark.soak
def test_mysql_with_a_file_secret(standins: None, tmp_path: Path) -> None:
    tag_as(MARIADB_STANDIN, "mariadb:10-focal")
    stack = CorpusStack(corpus_dir("nginx-flask-mysql"), tmp_path, ["db"])
    password = sentinel()
    (stack.dir / "db" / "password.txt").write_text(password + "\n")
    try:
        stack.up()
        stack.exec("db", "sh", "-c", ORACLE_LAYOUT)
        run_round_trip(stack, "mysql", *mysql_case(stack, "example"), sentinels=[password],
                       expect_source=("password_container_env", "MYSQL_ROOT_PASSWORD_FILE"))
    finally:
        stack.down()


@pytest.mark.soak
def test_mariadb_with_a_literal_password(standins: None, tmp_path: Path) -> None:
    tag_as(MARIADB_STANDIN, "mariadb:10.6.4-focal")
    stack = CorpusStack(corpus_dir("wordpress-mysql"), tmp_path, ["db"])
    password = f"lit{secrets.token_hex(8)}"  # a YAML list item: kept plain
    compose = stack.dir / stack.compose_file
    text = compose.read_text()
    assert "MYSQL_ROOT_PASSWORD=somewordpress" in text
    compose.write_text(text.replace("MYSQL_ROOT_PASSWORD=somewordpress",
                                    f"MYSQL_ROOT_PASSWORD={password}"))
    try:
        stack.up()
        stack.exec("db", "sh", "-c", MARIADB11_LAYOUT)
        run_round_trip(stack, "mysql", *mysql_case(stack, "wordpress"), sentinels=[password],
                       expect_source=("password_container_env", "MYSQL_ROOT_PASSWORD"))
    finally:
        stack.down()


# ------------------------------------------------------------------ MongoDB stand-in

@pytest.mark.soak
def test_mongodb_standin(standins: None, tmp_path: Path) -> None:
    from pymongo import MongoClient

    tag_as(MONGO_STANDIN, "mongo:4.2.0")
    stack = CorpusStack(corpus_dir("react-express-mongodb"), tmp_path, ["mongo"],
                        {"mongo": {"ports": ["127.0.0.1::27017"]}})
    try:
        stack.up()
        client: MongoClient[dict[str, object]] = MongoClient(
            "127.0.0.1", stack.published("mongo", 27017), directConnection=True,
            serverSelectionTimeoutMS=10000)
        items = client["shop"]["items"]

        def seed() -> None:
            items.insert_many([{"_id": i, "v": secrets.token_hex(8), "tags": ["a", i]}
                               for i in range(150)])

        def damage() -> None:
            items.delete_many({"_id": {"$lt": 40}})
            items.insert_one({"_id": 999, "v": "after"})

        def read() -> list[dict[str, object]]:
            return list(items.find().sort("_id", 1))

        try:
            run_round_trip(stack, "mongodb", seed, damage, read, sentinels=[],
                           expect_source=("service", "mongo"))
        finally:
            client.close()
    finally:
        stack.down()


# ------------------------------------------------------------------ Redis

def redis_case(stack: CorpusStack, service: str, auth: dict[str, str]
               ) -> tuple[object, object, object]:
    def cli(*args: str, input_text: str | None = None) -> str:
        return stack.exec(service, "redis-cli", "--no-auth-warning", *args, env=auth,
                          input_text=input_text)

    def seed() -> None:
        commands = [f"SET key:{i} {secrets.token_hex(6)}" for i in range(120)]
        commands += ["HSET h a 1 b 2", "RPUSH l x y z"]
        cli(input_text="\n".join(commands) + "\n")

    def damage() -> None:
        cli("FLUSHALL")
        cli("SET only-after 1")

    def read() -> str:
        # one exec: every key (sorted) with its DUMP, escaped (binary-safe text)
        return stack.exec(service, "sh", "-c", 'for k in $(redis-cli --no-auth-warning --raw '
                          'KEYS "*" | sort); do echo "$k"; redis-cli --no-auth-warning --no-raw '
                          'DUMP "$k"; done', env=auth)

    return seed, damage, read


@pytest.mark.soak
def test_redis_without_a_password(standins: None, tmp_path: Path) -> None:
    tag_as(REDIS_STANDIN, "redislabs/redismod:latest")
    stack = CorpusStack(corpus_dir("flask-redis"), tmp_path, ["redis"],
                        {"redis": {"ports": ["127.0.0.1::6379"]}})
    try:
        stack.up()
        seed, damage, read = redis_case(stack, "redis", {})
        run_round_trip(stack, "redis", seed, damage, read, sentinels=[],
                       expect_source=("service", "redis"))
        toml = (stack.dir / "backout.toml").read_text()
        assert "password: none in the compose file" in toml
    finally:
        stack.down()


RUNBOOK_REDIS = """\
services:
  redis:
    image: {image}
    command: ["redis-server", "--requirepass", "${{REDIS_PASSWORD}}"]
    healthcheck:
      test: ["CMD-SHELL", "redis-cli -h 127.0.0.1 ping 2>&1 | grep -q NOAUTH"]
      interval: 1s
      retries: 30
    volumes:
      - redis-data:/data
volumes:
  redis-data:
"""


def test_redis_with_requirepass_from_a_variable(tmp_path: Path) -> None:
    """The runbook's Redis: the password only in .env, the command referencing it.
    init names REDIS_PASSWORD; checkpoint and rollback db work without any edit."""
    from tests.support.stack import build_images

    build_images()
    source = tmp_path / "src" / "runbook-redis"
    source.mkdir(parents=True)
    (source / "compose.yaml").write_text(RUNBOOK_REDIS.format(image=REDIS_STANDIN))
    password = f"rq{secrets.token_hex(8)} \"quoted\" # not a comment"
    # double-quoted in .env: Compose unescapes \" ; the container gets `password`
    (source / ".env").write_text('REDIS_PASSWORD="' + password.replace('"', '\\"') + '"\n')
    stack = CorpusStack(source, tmp_path, ["redis"])
    try:
        stack.up()
        seed, damage, read = redis_case(stack, "redis", {"REDISCLI_AUTH": password})
        run_round_trip(stack, "redis", seed, damage, read, sentinels=[password],
                       expect_source=("password_env", "REDIS_PASSWORD"))
        # the server really requires it (the round trip above did not run unauthenticated)
        denied = stack.compose("exec", "-T", "redis", "redis-cli", "DBSIZE", check=False)
        assert "NOAUTH" in denied.stdout + denied.stderr
        assert re.search(r"requirepass", (stack.dir / "backout.toml").read_text())
    finally:
        stack.down()


def test_corpus_override_keeps_the_corpus_untouched() -> None:
    """The corpus is an input: the tests above work on copies (a cheap guard)."""
    if CORPUS is None:
        pytest.skip("the awesome-compose corpus is absent")
    assert not any((CORPUS / name / "backout.toml").exists()
                   for name in os.listdir(CORPUS) if (CORPUS / name).is_dir())


# ------------------------------------------------------------------ a non-root user

@pytest.mark.soak
def test_mariadb_application_user_and_missing_privileges(standins: None, tmp_path: Path) -> None:
    """Without root: the compose file's MYSQL_USER (ALL on its database, as the official
    entrypoint grants) dumps, restores and gets a true warning about the binlog
    position; a user with SELECT only is refused before any dump, the missing
    privileges and the GRANT named."""
    tag_as(MARIADB_STANDIN, "mariadb:10.6.4-focal")
    stack = CorpusStack(corpus_dir("wordpress-mysql"), tmp_path, ["db"])
    compose = stack.dir / stack.compose_file
    # the corpus's user password is the user's name: redacted as a password, it would
    # hide the name in every message
    app_password = f"app{secrets.token_hex(8)}"
    compose.write_text(compose.read_text().replace("MYSQL_PASSWORD=wordpress",
                                                   f"MYSQL_PASSWORD={app_password}"))
    try:
        stack.up()
        # the application's own tables and views (a view root defined could not be
        # restored by this user: its DEFINER needs SET USER)
        seed, damage, read = mysql_case(stack, "wordpress", APP_SQL)
        assert callable(seed) and callable(damage) and callable(read)
        ok(backout("init", cwd=stack.dir, **stack.env))
        stack.use_override_in_config()
        toml = stack.dir / "backout.toml"
        text = toml.read_text()
        section = re.search(r"\[databases\.mysql\]\n(?:.+\n)*\n", text)
        assert section is not None
        app = ('[databases.mysql]\ntype = "mysql"\nservice = "db"\nuser = "wordpress"\n'
               'password_container_env = "MYSQL_PASSWORD"\ndatabases = ["wordpress"]\n\n')
        toml.write_text(text.replace(section.group(0), app))
        seed()
        expected = read()
        backup = backout("backup", "mysql", "--json", cwd=stack.dir, **stack.env)
        assert backup.returncode == 0, (backup.stdout, backup.stderr)  # done, with a warning
        assert "user 'wordpress' cannot read the binlog position" in backup.stderr
        set_id = json.loads(backup.stdout)["set_id"]
        damage()
        rolled = ok(backout("rollback", "db", "mysql", set_id, "--yes", cwd=stack.dir,
                            **stack.env))
        assert read() == expected
        assert app_password not in backup.stdout + backup.stderr + rolled.stdout + rolled.stderr
        # a view root defined: this user's restore would fail, so its backup says so
        stack.exec("db", "sh", "-c", ROOT_SQL, "sh", "wordpress", "-e",
                   "CREATE VIEW by_root AS SELECT id FROM items")
        warned = backout("backup", "mysql", cwd=stack.dir, **stack.env)
        assert warned.returncode == 0, warned.stderr
        assert ("a restore as 'wordpress' will fail: view wordpress.by_root (definer "
                "root@localhost) must be recreated with another user as DEFINER, which needs "
                "SET USER (or SUPER)") in warned.stderr, warned.stderr

        stack.exec("db", "sh", "-c", ROOT_SQL, "sh", "-e",
                   "CREATE USER 'reader'@'%' IDENTIFIED BY 'reader-pw';"
                   "GRANT SELECT ON wordpress.* TO 'reader'@'%';")
        (stack.dir / "reader.pw").write_text("reader-pw\n")
        toml.write_text(toml.read_text().replace(
            'user = "wordpress"\npassword_container_env = "MYSQL_PASSWORD"',
            'user = "reader"\npassword_file = "reader.pw"'))
        refused = backout("backup", "mysql", cwd=stack.dir, **stack.env)
        assert refused.returncode == 6, (refused.stdout, refused.stderr)
        assert ("user 'reader' lacks what a consistent dump needs: SHOW VIEW, TRIGGER, EVENT on "
                "wordpress") in refused.stderr
        assert "GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `wordpress`.* TO 'reader'@'%'" \
            in refused.stderr
    finally:
        stack.down()


GUESS = """\
services:
  kv:
    image: {image}
    volumes:
      - kv-data:/data
volumes:
  kv-data:
"""


def test_an_image_that_says_nothing_is_recognised_by_what_runs_inside(
        standins: None, tmp_path: Path) -> None:
    """An image named after nothing (a private build): init finds redis-server in its
    running container, writes it as redis and says it was a guess."""
    name = "backout-standin/kv-store:guess"
    tag_as(REDIS_STANDIN, name)
    source = tmp_path / "src" / "private-build"
    source.mkdir(parents=True)
    (source / "compose.yaml").write_text(GUESS.format(image=name))
    stack = CorpusStack(source, tmp_path, ["kv"])
    try:
        cold = backout("init", "--json", cwd=stack.dir, **stack.env)
        assert json.loads(cold.stdout)["databases"] == {}  # not running: nothing to go on
        stack.up()
        data = ok_json(backout("init", "--force", "--json", cwd=stack.dir, **stack.env))
        assert data["databases"] == {"redis": "redis"}
        assert data["recognised"] == {"redis": "guessed: the container runs or has redis-server"}
        text = (stack.dir / "backout.toml").read_text()
        assert "# guessed: the container runs or has redis-server: check that this service " \
               "is that database" in text
    finally:
        stack.down()
