"""Dependencies point one way: the core never imports the CLI layer or click."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "backout"
UI_MODULES = ("click", "typer", "rich", "backout.cli", "backout.web")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_never_imports_the_cli_layer() -> None:
    # __main__ is the `python -m backout` edge: it only calls the CLI's entry point.
    core = [p for p in SRC.rglob("*.py") if not {"cli", "web", "__main__.py"} & set(p.relative_to(SRC).parts)]
    assert len(core) > 10, "the scan must see the core modules"
    offenders = {
        str(p.relative_to(SRC)): sorted(n for n in _imports(p)
                                        if any(n == m or n.startswith(m + ".") for m in UI_MODULES))
        for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_itself_detects_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import click\nfrom backout.cli.main import cli\n")
    assert {"click", "backout.cli.main"} <= _imports(bad)
