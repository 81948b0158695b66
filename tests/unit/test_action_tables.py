"""The executor finds a step's action in the ACTIONS tables, loading them in order
only as far as needed: a service rollback starts without importing the deploy's and
the backups' module trees."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from backout.operations import executor
from backout.operations.executor import ACTION_MODULES, action, find_action, load_actions


def test_no_action_name_is_in_two_tables() -> None:
    """Lookup stops at the first table that has the name: a name in two would make
    the winner depend on the tables' order."""
    seen: dict[str, str] = {}
    for module in ACTION_MODULES:
        for name in importlib.import_module(module).ACTIONS:
            assert name not in seen, f"{name} is in {seen[name]} and {module}"
            seen[name] = module
    assert len(seen) > 20


def test_a_service_rollbacks_actions_load_without_the_deploy_or_the_backups() -> None:
    probe = ("import sys\n"
             "from backout.operations.executor import action\n"
             "from backout.rollback import service\n"
             "for name in ('rollback.service.recreate', 'switch.start'):\n"
             "    assert action(name) is {**service.ACTIONS, **__import__('backout.switch', "
             "fromlist=['ACTIONS']).ACTIONS}[name]\n"
             "print(sorted(m for m in sys.modules if m.startswith(('backout.deploy', "
             "'backout.backup'))))\n"
             "action('deploy.record')\n"
             "print('backout.deploy.operation' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    assert out == ["[]", "True"]


def test_an_action_taken_away_comes_back_and_a_missing_one_is_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's monkeypatch of a table not loaded yet deletes the name at teardown:
    the next lookup must find the real one again, not call it unknown."""
    load_actions()
    real = executor._ACTIONS["deploy.record"]
    monkeypatch.delitem(executor._ACTIONS, "deploy.record")
    assert action("deploy.record") is real
    assert find_action("no.such.action") is None
    with pytest.raises(KeyError):
        action("no.such.action")
