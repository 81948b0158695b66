"""Dependencies point one way (docs/ARCHITECTURE.md): every module of src/backout has a
layer, and a module imports only its own layer or lower; there is no import cycle;
the Compose adapter is used by the Compose platform alone; the core never imports
the CLI layer or click.

Imports are read from the source (``ast``), function-local ones included; imports
under ``if TYPE_CHECKING:`` are left out (they never run). Each check has a
self-test proving it catches a planted violation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import click
import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "backout"
UI_MODULES = ("click", "typer", "rich", "backout.cli", "backout.web")

# module prefix -> layer, bottom (0) to top (9). The longest matching prefix decides;
# a key ending in ".*" matches the package's submodules only, not its __init__.
LAYERS: dict[str, int] = {
    # 0 foundation: exit codes, the Environment, subprocesses, fault points, .env
    "backout": 0,  # the package __init__ (__version__ only)
    "backout.errors": 0,
    "backout.environment": 0,
    "backout.proc": 0,
    "backout.cliplugin": 0,  # `docker compose` as the CLI runs it (proc runs Compose through it)
    "backout.faults": 0,
    "backout.version": 0,
    # what SIGINT/SIGTERM do: needs only errors; the streaming pipeline polls it
    "backout.operations.interrupt": 0,
    # 1 tables, pure decision code, wrappers of one external program each
    "backout.engines": 1,  # the engine table (package __init__ only)
    "backout.platforms": 1,  # the platform table (package __init__ only)
    "backout.platforms.base": 1,  # the Platform protocol and its plain value types
    "backout.storage.repositories": 1,  # the repository table (package __init__ only)
    "backout.policy": 1,
    "backout.adapters": 1,
    # 2 the validated config, the state store and lock
    "backout.config": 2,
    "backout.state": 2,
    # 3 what runs the stack; where backup sets live; notifications
    "backout.platforms.*": 3,
    "backout.storage": 3,
    "backout.storage.repositories.*": 3,  # the Repository protocol, restic
    "backout.notify": 3,
    # 4 everything a database type means; the monitor's signal sources
    "backout.engines.*": 4,
    "backout.signals": 4,
    # 5 plan-then-execute, releases, post-operation checks
    "backout.operations": 5,
    "backout.releases": 5,
    "backout.verify": 5,
    "backout.switch": 5,  # a service's start-first switch: keyed steps and their actions
    # 6 the operations
    "backout.backup": 6,
    "backout.rollback": 6,
    # 7 the monitor loop (uses rollback plans)
    "backout.monitor": 7,
    # 8 deploy (uses the monitor loop), setup, the demo, shell completion
    "backout.deploy": 8,
    "backout.setup": 8,
    "backout.demo": 8,
    "backout.completion": 8,
    "backout.status": 8,  # reads the monitor's baseline and the rollback's drift
    # 9 the click layer and `python -m backout`
    "backout.cli": 9,
    "backout.__main__": 9,
}

COMPOSE_ADAPTER = "backout.adapters.compose"
COMPOSE_USERS = ("backout.platforms.compose", "backout.adapters")
SWARM_ADAPTER = "backout.adapters.swarm"
SWARM_USERS = ("backout.platforms.swarm", "backout.adapters")  # prefixes allowed to use it


def layer_of(module: str, table: Mapping[str, int] = LAYERS) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for prefix, layer in table.items():
        if prefix.endswith(".*"):
            base = prefix[:-2]
            hit = module.startswith(base + ".")
            length = len(base) + 1
        else:
            hit = module == prefix or module.startswith(prefix + ".")
            length = len(prefix)
        if hit and (best is None or length > best[0]):
            best = (length, layer)
    return None if best is None else best[1]


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, known: Iterable[str] = ()) -> set[str]:
    """The modules ``source`` (the module ``module``) imports. ``from pkg import name``
    counts as an import of ``pkg.name`` when that is a known module, else of ``pkg``."""
    known = set(known)
    is_package = any(k.startswith(module + ".") for k in known)
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return names


def graph(root: Path = SRC) -> dict[str, set[str]]:
    """module -> the backout modules it imports (module level and function-local)."""
    paths = {module_name(p, root): p for p in root.rglob("*.py") if "stack" not in
             p.relative_to(root).parts}  # the demo's container app is not part of backout
    out: dict[str, set[str]] = {}
    for name, path in paths.items():
        found = imports_of(path.read_text(), name, paths)
        out[name] = {m for m in found if m in paths and m != name}
    return out


def upward_imports(edges: Mapping[str, set[str]],
                   table: Mapping[str, int] = LAYERS) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        mine = layer_of(module, table)
        for target in sorted(targets):
            theirs = layer_of(target, table)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    return bad


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def compose_adapter_users(edges: Mapping[str, set[str]]) -> list[str]:
    return sorted(m for m, targets in edges.items() if COMPOSE_ADAPTER in targets
                  and not any(m == p or m.startswith(p + ".") for p in COMPOSE_USERS))


# ----------------------------------------------------------------------------- checks


def test_every_module_has_a_layer() -> None:
    edges = graph()
    assert len(edges) > 60, "the scan must see the modules"
    assert [m for m in edges if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports(graph()) == []


def test_there_is_no_import_cycle() -> None:
    found = cycles(graph())
    assert [c for c in found if not all(m.startswith("backout.cli") for m in c)] == []


def test_the_cli_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


# The CLI is thin: the command modules share cli.common and nothing else of cli/.
CLI_SHARED = ("backout.cli", "backout.cli.common", "backout.cli.main", "backout.cli.output",
              "backout.cli.progress")
CLI_MAY_IMPORT = ("backout.cli.common",)
# cli/ modules allowed a function-local import, with why (a heavy optional import).
CLI_LOCAL_IMPORTS: dict[str, str] = {
    "backout.cli.common": "every command imports it: the deploy's and the backups' trees, "
                          "which only the deploy report needs, cost each start 0.1 s",
    "backout.cli.rollback": "`rollback service` need not import the data rollbacks' trees",
    "backout.cli.backups": "a `backup` need not import what `backups verify|prune` and "
                           "`schedule` use (the notifier's urllib, ssl and email; the "
                           "calendar; prune; the restore test)",
}
CLI_FORBIDDEN = ("rmtree", "sqlite3", ".execute(", ".executemany(", ".executescript(")


def command_module_imports(edges: Mapping[str, set[str]]) -> list[str]:
    """Command modules importing a backout.cli module other than cli.common."""
    return sorted(f"{m} imports {t}" for m, targets in edges.items()
                  if m.startswith("backout.cli.") and m not in CLI_SHARED
                  for t in targets if t.startswith("backout.cli") and t not in CLI_MAY_IMPORT)


def function_local_imports(source: str) -> list[int]:
    """Line numbers of imports inside a function or class body."""
    lines: list[int] = []

    def visit(node: ast.AST, nested: bool) -> None:
        if nested and isinstance(node, (ast.Import, ast.ImportFrom)):
            lines.append(node.lineno)
        inside = nested or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                             ast.ClassDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(source), False)
    return lines


def cli_sources(root: Path = SRC) -> dict[str, str]:
    return {module_name(p, root): p.read_text() for p in sorted((root / "cli").rglob("*.py"))}


def test_command_modules_import_only_cli_common() -> None:
    edges = graph()
    modules = [m for m in edges if m.startswith("backout.cli.") and m not in CLI_SHARED]
    assert len(modules) >= 10, "the scan must see the command modules"
    assert command_module_imports(edges) == []


def test_cli_has_no_function_local_imports() -> None:
    found = {m: function_local_imports(text) for m, text in cli_sources().items()}
    assert {m: lines for m, lines in found.items() if lines and m not in CLI_LOCAL_IMPORTS} == {}


def test_cli_removes_no_files_and_runs_no_sql() -> None:
    found = {m: [w for w in CLI_FORBIDDEN if w in text] for m, text in cli_sources().items()}
    assert {m: words for m, words in found.items() if words} == {}


def test_every_command_module_is_in_the_registry() -> None:
    from backout.cli.main import COMMANDS, cli

    listed = {f"backout.cli.{target.partition(':')[0]}" for target in COMMANDS.values()}
    modules = {m for m in graph() if m.startswith("backout.cli.") and m not in CLI_SHARED}
    assert listed == modules
    ctx = click.Context(cli)
    assert all(isinstance(cli.get_command(ctx, name), click.Command) for name in COMMANDS)


def test_only_the_compose_platform_uses_the_compose_adapter() -> None:
    edges = graph()
    assert "backout.platforms.compose" in {m for m, t in edges.items() if COMPOSE_ADAPTER in t}
    assert compose_adapter_users(edges) == []


def test_only_the_swarm_platform_uses_the_swarm_adapter() -> None:
    edges = graph()
    users = {m for m, t in edges.items() if SWARM_ADAPTER in t}
    assert "backout.platforms.swarm" in users
    assert sorted(m for m in users
                  if not any(m == p or m.startswith(p + ".") for p in SWARM_USERS)) == []


def test_adapters_know_nothing_of_backout_toml() -> None:
    edges = graph()
    bad = {m: sorted(t for t in targets if t.startswith("backout.config"))
           for m, targets in edges.items() if m.startswith("backout.adapters")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_core_never_imports_the_cli_layer() -> None:
    # __main__ is the `python -m backout` edge: it only calls the CLI's entry point.
    core = [p for p in SRC.rglob("*.py")
            if not {"cli", "web", "__main__.py"} & set(p.relative_to(SRC).parts)]
    assert len(core) > 10, "the scan must see the core modules"
    offenders = {
        str(p.relative_to(SRC)): sorted(n for n in _all_imports(p)
                                        if any(n == m or n.startswith(m + ".") for m in UI_MODULES))
        for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# ----------------------------------------------------------------------------- self-tests


def _planted(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    root = tmp_path / "backout"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return graph(root)


def test_the_layer_check_detects_an_upward_import(tmp_path: Path) -> None:
    edges = _planted(tmp_path, {
        "config/load.py": "def f():\n    from backout.setup.generate import x\n",  # function-local
        "setup/generate.py": "x = 1\n",
        "state/store.py": "from backout import releases\n",  # from-package-import-module
        "releases.py": "",
    })
    assert upward_imports(edges) == [
        "backout.config.load (layer 2) imports backout.setup.generate (layer 8)",
        "backout.state.store (layer 2) imports backout.releases (layer 5)"]


def test_the_layer_table_uses_the_longest_prefix() -> None:
    assert layer_of("backout.engines") == 1 and layer_of("backout.engines.mysql") == 4
    assert layer_of("backout.platforms.base") == 1 and layer_of("backout.platforms.compose") == 3
    assert layer_of("backout.operations.interrupt") == 0
    assert layer_of("backout.operations.executor") == 5
    assert layer_of("elsewhere") is None


def test_type_checking_imports_are_left_out(tmp_path: Path) -> None:
    edges = _planted(tmp_path, {
        "platforms/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from backout.config import Config\nelse:\n"
                                 "    from backout import errors\n",
        "config/__init__.py": "", "errors.py": ""})
    assert edges["backout.platforms"] == {"backout.errors"}


def test_the_cycle_check_detects_a_cycle(tmp_path: Path) -> None:
    edges = _planted(tmp_path, {
        "a.py": "import backout.b\n",
        "b.py": "def later():\n    from backout import c\n",
        "c.py": "from backout.a import thing\n",
        "d.py": "import backout.a\n",
    })
    assert cycles(edges) == [["backout.a", "backout.b", "backout.c"]]


def test_the_compose_adapter_check_detects_a_user(tmp_path: Path) -> None:
    edges = _planted(tmp_path, {
        "adapters/compose.py": "",
        "platforms/compose.py": "from backout.adapters.compose import Compose\n",
        "rollback/service.py": "from backout.adapters import compose\n",
    })
    assert compose_adapter_users(edges) == ["backout.rollback.service"]


def test_the_cli_check_itself_detects_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import click\nfrom backout.cli.main import cli\n")
    assert {"click", "backout.cli.main"} <= _all_imports(bad)


def test_the_command_module_check_detects_a_sibling_import(tmp_path: Path) -> None:
    edges = _planted(tmp_path, {
        "cli/common.py": "", "cli/main.py": "",
        "cli/deploy.py": "from backout.cli.common import run_plan\n",
        "cli/operations.py": "def f():\n    from backout.cli.deploy import report\n",
        "cli/status.py": "from backout.cli import main\n",
    })
    assert command_module_imports(edges) == [
        "backout.cli.operations imports backout.cli.deploy",
        "backout.cli.status imports backout.cli.main"]


def test_the_local_import_check_detects_one() -> None:
    source = ("import os\nif os:\n    import sys\n"
              "def f():\n    import json\nclass C:\n    def g(self):\n"
              "        from backout import x\n")
    assert function_local_imports(source) == [5, 8]


def test_the_forbidden_words_check_reads_cli_sources(tmp_path: Path) -> None:
    (tmp_path / "backout" / "cli").mkdir(parents=True)
    (tmp_path / "backout" / "cli" / "prune.py").write_text("import shutil\nshutil.rmtree(p)\n")
    found = {m: [w for w in CLI_FORBIDDEN if w in t] for m, t in
             cli_sources(tmp_path / "backout").items()}
    assert found == {"backout.cli.prune": ["rmtree"]}


# --- the zstd command line is built in one place --------------------------------

ZSTD_HOME = "storage/pipeline.py"  # relative to src/backout


def zstd_argv_builders(root: Path = SRC) -> list[str]:
    """``file:line`` of every argv literal starting with "zstd" outside storage/pipeline."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == ZSTD_HOME:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.List, ast.Tuple)) and node.elts and \
                    isinstance(node.elts[0], ast.Constant) and node.elts[0].value == "zstd":
                found.append(f"{rel}:{node.lineno}")
    return found


def test_zstd_is_spawned_only_by_the_storage_pipeline() -> None:
    assert zstd_argv_builders() == [], \
        "build zstd argv only in storage/pipeline.py (decompressed, decompress_into, head_of)"


def test_the_zstd_check_detects_a_planted_argv(tmp_path: Path) -> None:
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "pipeline.py").write_text('A = ["zstd", "-d"]\n')
    (tmp_path / "rollback").mkdir()
    (tmp_path / "rollback" / "db.py").write_text(
        'import subprocess\n\ndef f(p):\n    subprocess.run(["zstd", "-d", "-c", p])\n')
    assert zstd_argv_builders(tmp_path) == ["rollback/db.py:4"]


# --- what a database type means lives in engines/ -------------------------------

ENGINE_HOME = "engines/"  # relative to src/backout
# Literals naming an engine outside engines/ that are not dispatch on a type:
ENGINE_NAME_ALLOWED = {
    "demo/run.py",  # the demo stack's own service is called "redis"
    "demo/stack/web/app.py",  # the demo web app's REDIS_HOST default (a host name)
}


def engine_names_outside_engines(root: Path = SRC,
                                 allowed: Iterable[str] = ENGINE_NAME_ALLOWED) -> list[str]:
    """``file:line`` of every string literal equal to an engine's type outside engines/.

    A comparison (``db.type == "mysql"``), a dict keyed by engine names or a lookup
    ``{...}[db.type]`` all need the literal, so finding none proves dispatch goes
    through ``backout.engines.get``."""
    from backout import engines

    names = set(engines.names())
    allowed = set(allowed)
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(ENGINE_HOME) or rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value in names:
                found.append(f"{rel}:{node.lineno}")
    return found


def test_engine_types_are_named_only_in_engines() -> None:
    assert engine_names_outside_engines() == [], \
        "dispatch on a database type through backout.engines.get(db.type), not a literal"


@pytest.mark.parametrize("planted", [
    'def f(db):\n    if db.type == "mysql":\n        return 1\n',
    'UNIT = {"redis": "keys"}\n',
    'def f(db):\n    return {"mongodb": 1}[db.type]\n',
])
def test_the_engine_name_check_detects_dispatch(tmp_path: Path, planted: str) -> None:
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "mysql.py").write_text('TYPE = "mysql"\n')
    (tmp_path / "rollback").mkdir()
    (tmp_path / "rollback" / "db.py").write_text(planted)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "run.py").write_text('SERVICE = "redis"\n')
    found = engine_names_outside_engines(tmp_path, allowed={"demo/run.py"})
    assert len(found) == 1 and found[0].startswith("rollback/db.py:")


# --- all SQL on the state database lives in state/ ------------------------------
# No module outside it runs a statement (``.execute(``, ``.executemany(``,
# ``.executescript(``); they call the store's typed methods, so the schema changes in
# one place.
SQL_CALLS = ("execute", "executemany", "executescript")


def _sql_calls(path: Path) -> list[str]:
    """``file:line .method`` of every call of a statement-running method in ``path``
    (whatever the receiver: ``store.db.execute``, ``cur.executemany``, ``db.execute``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in SQL_CALLS:
            found.append(f"{path.name}:{node.lineno} .{node.func.attr}")
    return found


def _offenders(root: Path) -> dict[str, list[str]]:
    outside = [p for p in root.rglob("*.py") if p.relative_to(root).parts[0] != "state"]
    return {str(p.relative_to(root)): calls for p in outside if (calls := _sql_calls(p))}


def test_no_sql_outside_the_state_package() -> None:
    assert len(list(SRC.rglob("*.py"))) > 50, "the scan must see the package"
    assert _sql_calls(SRC / "state" / "store.py"), "the scan must recognise the store's SQL"
    assert _offenders(SRC) == {}


def test_the_check_itself_detects_a_violation(tmp_path: Path) -> None:
    pkg = tmp_path / "backout"
    (pkg / "state").mkdir(parents=True)
    (pkg / "state" / "store.py").write_text("def ok(db):\n    db.execute('SELECT 1')\n")
    (pkg / "rollback").mkdir()
    (pkg / "rollback" / "db.py").write_text(
        "def bad(store):\n"
        "    store.db.execute('SELECT path FROM checkpoints')\n"
        "    cur = store.db.cursor()\n"
        "    cur.executemany('INSERT INTO t VALUES (?)', [(1,)])\n"
        "    store.db.executescript('DELETE FROM t')\n")
    assert _offenders(pkg) == {"rollback/db.py": ["db.py:2 .execute", "db.py:4 .executemany",
                                                  "db.py:5 .executescript"]}
