"""All SQL on the state database lives in ``state/``: no module outside it runs a
statement (``.execute(``, ``.executemany(``, ``.executescript(``); they call the
store's typed methods instead, so the schema can change in one place."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "backout"
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
