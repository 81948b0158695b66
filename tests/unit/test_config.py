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


# --- [monitor] ----------------------------------------------------------------------------

MONITOR = """
[monitor]
interval_seconds = 10
window_seconds = 120
use_default_rules = true

[[monitor.rules]]
name = "red-memory"
signal = "memory_percent"
comparison = ">"
threshold = 90
level = "RED"
severity = "SEV-2"
action = "rollback-service"
clear_threshold = 80.5
clear_for_seconds = 120

[[monitor.rules]]
name = "slow-checkout"
signal = 'p95_latency_seconds{service="backend"}'
comparison = ">"
threshold = 2.5
relative_to_baseline = true
for_seconds = 60
level = "YELLOW"
no_data = "failing"
description = "checkout slower than 2.5x its baseline"

[[monitor.rules]]
name = "probe"
signal = "probe_failed"
comparison = ">="
threshold = 1
consecutive = 3
level = "GREEN"

[monitor.notify]
webhook_url = "https://hooks.slack.com/services/T000/B000/XXXX"
webhook_format = "slack"
command = "logger -t backout"
"""


def test_monitor_defaults_when_absent() -> None:
    from backout.config.model import MonitorConfig
    from backout.policy.rules import DEFAULT_RULES

    config = parse_document("backout.toml", "", Path("/x"))
    assert config.monitor == MonitorConfig()
    assert (config.monitor.interval_seconds, config.monitor.window_seconds) == (5, 15)
    assert config.monitor.effective_rules == DEFAULT_RULES
    assert config.monitor.notify.webhook_url is None


def test_monitor_section_is_parsed() -> None:
    from backout.policy.rules import DEFAULT_RULES, Level

    monitor = parse_document("backout.toml", MONITOR, Path("/x")).monitor
    assert (monitor.interval_seconds, monitor.window_seconds) == (10, 120)
    memory, slow, probe = monitor.rules
    assert (memory.threshold, memory.clear_threshold, memory.clear_for_seconds) == (90.0, 80.5, 120)
    assert isinstance(memory.threshold, float)
    assert (slow.signal, slow.service, slow.relative_to_baseline) == (
        "p95_latency_seconds{service=backend}", "backend", True)
    assert (slow.level, slow.severity, slow.action, slow.no_data) == (
        Level.YELLOW, "SEV-3", "notify", "failing")  # severity and action from the level
    assert (probe.consecutive, probe.severity, probe.action) == (3, "SEV-4", "none")
    rules = monitor.effective_rules
    assert len(rules) == len(DEFAULT_RULES) + 2
    assert [r for r in rules if r.name == "red-memory"] == [memory]  # replaces the default
    assert monitor.notify.webhook_format == "slack"
    assert monitor.notify.command == "logger -t backout"


def test_monitor_without_default_rules() -> None:
    text = MONITOR.replace("use_default_rules = true", "use_default_rules = false")
    monitor = parse_document("backout.toml", text, Path("/x")).monitor
    assert [r.name for r in monitor.effective_rules] == ["red-memory", "slow-checkout", "probe"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("consecutive = 3", 'consecutive = 3\nfor_seconds = "60"',
         "monitor.rules[2].for_seconds: must be an integer, not str '60'"),
        ("threshold = 2.5", "treshold = 2.5",
         'monitor.rules[1].treshold: unknown key (did you mean "threshold"?)'),
        ('signal = "probe_failed"\n', "",
         "monitor.rules[2].signal: missing (required)"),
        ("threshold = 2.5", 'threshold = "2.5x baseline"',
         "monitor.rules[1].threshold: must be a number, not str '2.5x baseline'"),
        ("threshold = 90", "threshold = true", "monitor.rules[0].threshold: must be a number"),
        ('comparison = ">="', 'comparison = "=>"', "monitor.rules[2].comparison: must be one of"),
        ('level = "GREEN"', 'level = "NODATA"',
         "monitor.rules[2].level: must be one of RED, YELLOW, GREEN, not 'NODATA'"),
        ('action = "rollback-service"', 'action = "rollback"',
         'monitor.rules[0].action: must be one of rollback-service, rollback-emergency, rollback-with-data, notify, '
         "none, not 'rollback'"),
        ('no_data = "failing"', 'no_data = "ignore"', "monitor.rules[1].no_data: must be one of"),
        ("clear_threshold = 80.5", "clear_threshold = 95",
         "monitor.rules[0].clear_threshold: must be at most the threshold (90)"),
        ("consecutive = 3", "consecutive = 0", "monitor.rules[2].consecutive: must be at least 1"),
        ("clear_for_seconds = 120", "clear_for_seconds = -1",
         "monitor.rules[0].clear_for_seconds: must be at least 0"),
        ('signal = "probe_failed"', 'signal = "probe failed"',
         "monitor.rules[2].signal: invalid signal 'probe failed'"),
        ('name = "probe"', 'name = "red-memory"',
         'monitor.rules[2].name: duplicate rule name "red-memory"'),
        ("window_seconds = 120", "window_seconds = 10",
         "monitor.window_seconds: must be greater than interval_seconds (10)"),
        ("interval_seconds = 10", "interval_seconds = 0",
         "monitor.interval_seconds: must be at least 1"),
        ("use_default_rules = true", 'use_default_rules = "yes"',
         "monitor.use_default_rules: must be true or false"),
        ("interval_seconds = 10", "interval = 10",
         'monitor.interval: unknown key (did you mean "interval_seconds"?)'),
        ('webhook_format = "slack"', 'webhook_format = "teams"',
         "monitor.notify.webhook_format: must be one of json, slack, not 'teams'"),
        ('webhook_url = "https', 'webhook_url = "ftp', "monitor.notify.webhook_url: must be an http"),
        ('command = "logger -t backout"', "command = ['logger']",
         "monitor.notify.command: must be a string"),
        ("[monitor.notify]", "[monitor.notfiy]",
         'monitor.notfiy: unknown key (did you mean "notify"?)'),
    ],
)
def test_monitor_problems_are_one_line_naming_the_key(old: str, new: str, expected: str) -> None:
    assert old in MONITOR
    with pytest.raises(ConfigError) as info:
        parse_document("backout.toml", MONITOR.replace(old, new, 1), Path("/x"))
    line = info.value.one_line()
    assert line.startswith("backout.toml: ")
    assert expected in line


@pytest.mark.parametrize(("text", "expected"), [
    ("monitor = 5", "monitor: must be a table"),
    ("[monitor.rules]\nname = 'x'", "monitor.rules: must be a list"),
    ("[monitor]\nrules = [1]", "monitor.rules[0]: must be a table"),
    ("[monitor]\nnotify = 'x'", "monitor.notify: must be a table"),
])
def test_monitor_shapes(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parse_document("backout.toml", text, Path("/x"))


def test_monitor_in_a_loaded_config(project: Path) -> None:
    config = load(project, GOOD + MONITOR)
    assert config.monitor.interval_seconds == 10  # type: ignore[attr-defined]


def test_monitor_extra_signals(project: Path) -> None:
    text = GOOD + """
[monitor]
prometheus_url = "http://127.0.0.1:9090"

[monitor.commands]
user_reports = "sh -c 'echo 3'"
data_corruption = "/usr/local/bin/check-invariants"

[monitor.promql]
"error_rate{service=backend}" = 'sum(rate(http_requests_total{status=~"5.."}[1m]))'
"""
    config = load(project, text)
    mon = config.monitor  # type: ignore[attr-defined]
    assert dict(mon.commands)["user_reports"] == "sh -c 'echo 3'"
    assert "error_rate{service=backend}" in dict(mon.promql)


@pytest.mark.parametrize(("extra", "expected"), [
    ('[monitor.commands]\nuser_reports = ""\n', "monitor.commands.user_reports: must be a non-empty"),
    ('[monitor.promql]\nq = "up"\n', "monitor.prometheus_url: required by [monitor.promql]"),
    ('[monitor.commands]\n"bad{x=1" = "true"\n', 'monitor.commands.bad{x=1: invalid signal'),
])
def test_monitor_extra_signal_errors(project: Path, extra: str, expected: str) -> None:
    assert expected in error_of(project, GOOD + "\n" + extra)


# --------------------------------------------------------------------------- [volumes]

VOLUMES = GOOD + """
[volumes.uploads]
volume = "uploads"
service = "backend"
stop_service = true
"""
COMPOSE_VOLUMES = {"uploads": {"backend"}, "mysql-data": {"mysql"}, "cache": set()}


def load_volumes(project: Path, text: str) -> object:
    (project / "backout.toml").write_text(text)
    return load_config(Environment(project_dir=project), project / "backout.toml",
                       compose_services=fake_compose,
                       compose_volumes=lambda _e, _c: COMPOSE_VOLUMES)


def test_a_volume_section_loads(project: Path) -> None:
    config = load_volumes(project, VOLUMES)
    vol = config.volumes["uploads"]  # type: ignore[attr-defined]
    assert (vol.volume, vol.service, vol.stop_service, vol.image) == \
        ("uploads", "backend", True, None)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('volume = "uploads"', 'volume = "uplods"',
         'volumes.uploads.volume: no volume "uplods" in compose project (did you mean "uploads"?)'),
        ('volume = "uploads"', "volume = 3", "volumes.uploads.volume: must be a string"),
        ('volume = "uploads"', 'volume = ""', "volumes.uploads.volume: must not be empty"),
        ('volume = "uploads"\n', "", "volumes.uploads.volume: missing (required)"),
        ('service = "backend"\nstop', 'service = "mysql"\nstop',
         'volumes.uploads.service: service "mysql" does not mount volume "uploads" '
         "(fix: name the service that uses it (backend))"),
        ('service = "backend"\nstop', 'service = "backendd"\nstop',
         'volumes.uploads.service: no service "backendd" in compose project'),
        ('service = "backend"\nstop', "stop", "volumes.uploads.stop_service: needs a service"),
        ("stop_service = true", 'stop_service = "yes"',
         "volumes.uploads.stop_service: must be true or false"),
        ("stop_service = true", "stop_servce = true",
         'volumes.uploads.stop_servce: unknown key (did you mean "stop_service"?)'),
        ("[volumes.uploads]", "[volumes.redis]",
         'volumes.redis: "redis" is taken by a database'),
        ("[volumes.uploads]", "[volumes.all]", 'volumes.all: "all" is taken by `backout backup all`'),
    ],
)
def test_each_volume_problem_is_one_line_naming_the_key(project: Path, old: str, new: str,
                                                        expected: str) -> None:
    assert old in VOLUMES
    with pytest.raises(ConfigError) as info:
        load_volumes(project, VOLUMES.replace(old, new, 1))
    assert info.value.exit_code == ExitCode.USAGE
    assert "backout.toml: volumes." in info.value.one_line()
    assert expected in info.value.one_line(), info.value.one_line()


def test_a_volume_without_a_service_is_fine(project: Path) -> None:
    text = VOLUMES.replace('service = "backend"\nstop_service = true\n', 'image = "debian:x"\n')
    config = load_volumes(project, text)
    assert config.volumes["uploads"].service is None  # type: ignore[attr-defined]


def test_deploy_section() -> None:
    config = parse_document("backout.toml", "[deploy]\nwatch_seconds = 120\ndisk_margin = 2\n"
                            "rollback_with_data = true\n", Path("/x"))
    assert (config.deploy.watch_seconds, config.deploy.disk_margin,
            config.deploy.rollback_with_data) == (120, 2.0, True)
    assert parse_document("backout.toml", "", Path("/x")).deploy.watch_seconds == 600
    for text, needle in (("[deploy]\nwatch = 3\n", "deploy.watch: unknown key"),
                         ("[deploy]\ndisk_margin = 0.5\n", "deploy.disk_margin: must be at least 1"),
                         ("[deploy]\nwatch_seconds = \"10m\"\n", "deploy.watch_seconds: must be")):
        with pytest.raises(ConfigError, match=needle):
            parse_document("backout.toml", text, Path("/x"))


def test_the_platform_defaults_to_compose_and_names_the_known_kinds(project: Path) -> None:
    from backout import platforms

    assert load(project).platform.kind == "compose"  # type: ignore[attr-defined]
    assert load(project, GOOD + '\n[platform]\nkind = "compose"\n'
                ).platform.kind == "compose"  # type: ignore[attr-defined]
    line = error_of(project, GOOD + '\n[platform]\nkind = "nomad"\n')
    assert line.endswith("backout.toml: platform.kind: must be one of compose, swarm, not 'nomad'")
    assert platforms.names() == ("compose", "swarm")
    assert "platform.kndi" in error_of(project, GOOD + '\n[platform]\nkndi = "compose"\n')


def test_a_swarm_platform_names_its_manager_and_nodes(project: Path) -> None:
    swarm = load(project, GOOD + '\n[platform]\nkind = "swarm"\nmanager = "unix:///run/m.sock"\n'
                          'stall_seconds = 30\n[platform.nodes]\nn2 = "ssh://root@n2"\n'
                 ).platform  # type: ignore[attr-defined]
    assert (swarm.kind, swarm.manager, swarm.nodes, swarm.stall_seconds) == \
        ("swarm", "unix:///run/m.sock", {"n2": "ssh://root@n2"}, 30)
    line = error_of(project, GOOD + '\n[platform]\nkind = "swarm"\n[platform.nodes]\nn2 = 5\n')
    assert "platform.nodes.n2: must be the node's Docker host" in line
    assert "platform.stall_seconds: must be at least 5" in error_of(
        project, GOOD + '\n[platform]\nkind = "swarm"\nstall_seconds = 1\n')


def test_database_types_come_from_the_engine_table(project: Path) -> None:
    from backout import engines

    line = error_of(project, GOOD.replace('type = "redis"', 'type = "postgres"'))
    assert f"must be one of {', '.join(engines.names())}, not 'postgres'" in line
