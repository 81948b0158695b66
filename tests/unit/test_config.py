"""backout.toml validation: every problem is one `file: key.path: problem` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from backout.config.load import load_config, parse_document
from backout.environment import Environment
from backout.errors import ConfigError, ExitCode

GOOD = """
[project]
compose_files = ["docker-compose.yml"]
env_file = ".env"

[databases.mysql]
type = "mysql"
service = "mysql"
user = "root"
password_env = "MYSQL_ROOT_PASSWORD"
databases = ["app"]

[databases.redis]
type = "redis"
service = "redis"
password_env = "REDIS_PASSWORD"

[services.backend]
kind = "app"
health_url = "http://127.0.0.1:8000/api/v1/health/check"
writes_to = ["mysql", "redis"]

[backups]
keep_last = 5
"""

COMPOSE_SERVICES = {"mysql", "redis", "backend", "nginx"}


def fake_compose(_env: Environment, _config: object) -> set[str]:
    return COMPOSE_SERVICES


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / ".env").write_text("MYSQL_ROOT_PASSWORD=s3cret-root\nREDIS_PASSWORD='r3dis-pw'\n")
    (tmp_path / "backout.toml").write_text(GOOD)
    return tmp_path


def load(project: Path, text: str | None = None) -> object:
    if text is not None:
        (project / "backout.toml").write_text(text)
    env = Environment(project_dir=project)
    return load_config(env, project / "backout.toml", compose_services=fake_compose)


def error_of(project: Path, text: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(project, text)
    assert info.value.exit_code == ExitCode.USAGE
    line = info.value.one_line()
    assert "\n" not in line
    return line


def test_good_config_loads_and_resolves_secrets(project: Path) -> None:
    config = load(project)
    assert config.databases["mysql"].databases == ("app",)  # type: ignore[attr-defined]
    assert config.secrets["REDIS_PASSWORD"] == "r3dis-pw"  # type: ignore[attr-defined]
    assert config.backups.keep_last == 5  # type: ignore[attr-defined]
    assert config.releases.keep_last == 10  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('service = "mysql"', 'service = "mysqll"',
         'databases.mysql.service: no service "mysqll" in compose project (did you mean "mysql"?)'),
        ("keep_last = 5", 'keep_last = "five"', "backups.keep_last: must be an integer, not str 'five'"),
        ("keep_last = 5", "keep_lost = 5", 'backups.keep_lost: unknown key (did you mean "keep_last"?)'),
        ('kind = "app"', 'kind = "ap"', "services.backend.kind: must be one of app, database, proxy"),
        ('type = "redis"', 'type = "memcached"', "databases.redis.type: must be one of"),
        ('writes_to = ["mysql", "redis"]', 'writes_to = ["mysql", "redsi"]',
         'services.backend.writes_to[1]: no database "redsi" in [databases] (did you mean "redis"?)'),
        ("[backups]", "[backup]", 'backup: unknown section (did you mean "backups"?)'),
        ('password_env = "REDIS_PASSWORD"', 'password_env = "REDIS_PASS"',
         "databases.redis.password_env: REDIS_PASS is not set in .env or the environment"),
        ('compose_files = ["docker-compose.yml"]', 'compose_files = ["compose.yaml"]',
         "project.compose_files[0]: compose.yaml does not exist"),
        ("keep_last = 5", "keep_last = true", "backups.keep_last: must be an integer, not bool True"),
        ('[services.backend]', '[services.backendd]',
         'services.backendd: no service of that name in compose project (did you mean "backend"?)'),
    ],
)
def test_each_problem_is_one_line_naming_the_key(project: Path, old: str, new: str,
                                                 expected: str) -> None:
    assert old in GOOD
    line = error_of(project, GOOD.replace(old, new, 1))
    assert line.startswith("backout.toml: ") or "backout.toml: " in line
    assert expected in line


def test_invalid_toml(project: Path) -> None:
    line = error_of(project, GOOD + "\n[broken\n")
    assert "backout.toml: invalid TOML:" in line
    assert "line" in line


def test_missing_env_file(project: Path) -> None:
    (project / ".env").unlink()
    line = error_of(project)
    assert "project.env_file: .env does not exist" in line


def test_unreadable_env_file(project: Path) -> None:
    (project / ".env").unlink()
    (project / ".env").mkdir()  # unreadable even for root, unlike chmod 000
    line = error_of(project)
    assert "project.env_file: cannot read .env" in line


def test_secret_values_never_in_errors(project: Path) -> None:
    text = GOOD.replace('service = "redis"', 'service = "r3dis-pw"')
    env = Environment(project_dir=project)
    # the redactor masks registered secrets wherever text is shown
    (project / "backout.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(env, project / "backout.toml", compose_services=fake_compose)
    assert "r3dis-pw" not in env.redact(info.value.one_line())


def test_tcp_mode_needs_port() -> None:
    with pytest.raises(ConfigError, match=r"databases.m.port: required"):
        parse_document("backout.toml", '[databases.m]\ntype="mysql"\nservice="m"\nmode="tcp"\n',
                       Path("."))


def test_defaults_when_sections_absent() -> None:
    config = parse_document("backout.toml", "", Path("/x"))
    assert config.project.compose_files == ("docker-compose.yml",)
    assert config.state_dir == Path("/x/.backout")
