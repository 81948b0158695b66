"""Credentials the container holds (password_container_env / _file, user_container_env):
validated in backout.toml, read inside the container through the platform's exec
(here: a fake container whose environment the test sets), kept out of argv and
redacted; and the .env values taken from Compose itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from backout.config import Config, DatabaseConfig
from backout.config.load import load_config
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import ConfigError, ExternalError
from tests.support.fakes import FakePlatform

BASE = """
[project]
compose_files = ["compose.yaml"]
env_file = ""

[databases.db]
type = "{type}"
service = "db"
"""


def error_of(tmp_path: Path, extra: str, type_: str = "mysql") -> str:
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    (tmp_path / "backout.toml").write_text(BASE.format(type=type_) + extra)
    with pytest.raises(ConfigError) as info:
        load_config(Environment(project_dir=tmp_path), tmp_path / "backout.toml",
                    compose_services=lambda _e, _c: {"db"},
                    compose_variables=lambda _e, _c, _n: {})
    return info.value.one_line()


def test_one_password_source(tmp_path: Path) -> None:
    line = error_of(tmp_path, 'password_env = "A"\npassword_container_env = "MYSQL_ROOT_PASSWORD"\n')
    assert "databases.db.password_container_env" in line and "one source, not two" in line


def test_container_credentials_need_exec_mode(tmp_path: Path) -> None:
    line = error_of(tmp_path, 'mode = "tcp"\nport = 3306\npassword_container_env = "P"\n')
    assert "databases.db.password_container_env" in line and 'needs mode = "exec"' in line
    assert "password_env" in line  # the fix names the alternative


def test_container_variable_must_be_a_name(tmp_path: Path) -> None:
    line = error_of(tmp_path, 'password_container_env = "$P"\n')
    assert "must be a variable name" in line


class FakeContainer(FakePlatform):
    """exec runs the command here, with only the environment the test gives the
    "container" (as docker exec gives the container's own environment)."""

    def __init__(self, environment: dict[str, str]) -> None:
        super().__init__()
        self.environment = environment

    def exec_argv(self, service: str, inner: Sequence[str],
                  env_names: Sequence[str] = ()) -> list[str]:
        self.calls.append(("exec_argv", service, tuple(inner)))
        return ["env", "-i", *[f"{k}={v}" for k, v in self.environment.items()], *inner]


def access(tmp_path: Path, platform: FakePlatform, **fields: str) -> EngineAccess:
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    db = dataclasses.replace(DatabaseConfig(name="db", type=fields.pop("type", "mysql"),
                                            service="db"), **fields)
    return EngineAccess(Environment(project_dir=tmp_path), config, db, platform)


def test_the_containers_own_variable(tmp_path: Path) -> None:
    secret = "lit sentinel $x 'q' \"dq\"\nline2 "
    platform = FakeContainer({"MYSQL_ROOT_PASSWORD": secret})
    a = access(tmp_path, platform, password_container_env="MYSQL_ROOT_PASSWORD")
    assert a.password() == secret  # byte for byte: spaces, quotes, newline kept
    assert a.password() == secret
    assert len(platform.called("exec_argv")) == 1  # read once per access
    argv = platform.called("exec_argv")[0][1]
    assert all(secret not in word for word in argv)  # only the name travels
    shown = a.env.redact(f"x {secret} y")
    assert "sentinel" not in shown and "line2" not in shown


def test_a_docker_secret_file_named_by_a_variable(tmp_path: Path) -> None:
    secret_file = tmp_path / "db-password"
    secret_file.write_text("file-sentinel\n\n")
    platform = FakeContainer({"MYSQL_ROOT_PASSWORD_FILE": str(secret_file)})
    a = access(tmp_path, platform, password_container_env="MYSQL_ROOT_PASSWORD_FILE")
    assert a.password() == "file-sentinel"  # trailing newlines dropped, as the images do


def test_a_variable_the_container_lacks_is_named_with_the_fix(tmp_path: Path) -> None:
    a = access(tmp_path, FakeContainer({}), password_container_env="MYSQL_ROOT_PASSWORD")
    with pytest.raises(ExternalError) as info:
        a.password()
    assert "MYSQL_ROOT_PASSWORD is not set in the environment of db" in info.value.message
    empty = access(tmp_path, FakeContainer({"P": ""}), password_container_env="P")
    assert empty.password() == ""  # set but empty is what the container has


def test_the_user_from_the_containers_environment(tmp_path: Path) -> None:
    a = access(tmp_path, FakeContainer({"MYSQL_USER": "app"}), user_container_env="MYSQL_USER")
    assert a.user("root") == "app"


def test_requirepass_of_a_redis_conf_in_the_container(tmp_path: Path) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text('bind 0.0.0.0\nrequirepass "conf-sentinel"\n')
    a = access(tmp_path, FakeContainer({}), type="redis", password_container_file=str(conf))
    assert a.password() == "conf-sentinel"
    conf.write_text("bind 0.0.0.0\n")
    b = access(tmp_path, FakeContainer({}), type="redis", password_container_file=str(conf))
    with pytest.raises(ExternalError) as info:
        b.password()
    assert "no password in" in info.value.message


# --- a non-root MySQL user: the privileges a consistent dump needs, checked first

def test_privileges_of_an_application_user() -> None:
    from backout.engines.mysql import (
        can_read_binlog_position,
        can_set_definers,
        missing_dump_privileges,
    )

    official = ["GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*X'",
                "GRANT ALL PRIVILEGES ON `shop`.* TO `app`@`%`"]
    assert missing_dump_privileges(official, ["shop"]) == {}
    assert missing_dump_privileges(official, ["other"]) == {
        "other": ["SELECT", "SHOW VIEW", "TRIGGER", "EVENT"]}
    assert not can_read_binlog_position(official)
    assert not can_set_definers(official)  # ALL on a database is not SET USER
    assert can_set_definers(["GRANT ALL PRIVILEGES ON *.* TO `admin`@`%`"])
    assert can_set_definers(["GRANT SET USER ON *.* TO `app`@`%`"])
    select_only = ["GRANT SELECT ON `shop`.* TO 'app'@'%'",
                   "GRANT SELECT, TRIGGER ON `shop`.`orders` TO 'app'@'%'"]
    assert missing_dump_privileges(select_only, ["shop"]) == {
        "shop": ["SHOW VIEW", "TRIGGER", "EVENT"]}  # a table grant does not cover the database
    global_ = ["GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, RELOAD, BINLOG MONITOR ON *.* TO `b`@`%`"]
    assert missing_dump_privileges(global_, ["a", "b"]) == {}
    assert can_read_binlog_position(global_)
    assert can_read_binlog_position(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"])
    odd = ["GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `we``ird`.* TO `u`@`%`"]
    assert missing_dump_privileges(odd, ["we`ird"]) == {}
