"""`backout --version`: the version, and in a checkout of backout the commit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from backout import __version__
from backout.cli.main import main
from backout.version import describe


def test_version_names_the_commit_in_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    root = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith(f"backout {__version__} (commit {head}"), out


def test_an_installed_copy_names_only_the_version(tmp_path: Path) -> None:
    # a package directory outside any backout source tree, as in site-packages
    pkg = tmp_path / "site-packages" / "backout"
    pkg.mkdir(parents=True)
    assert describe(pkg) == f"backout {__version__}"
    # a source tree that is not a git checkout: no commit either
    tree = tmp_path / "tree"
    shutil.copytree(Path(__file__).resolve().parents[2] / "src" / "backout",
                    tree / "src" / "backout", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "pyproject.toml").write_text('[project]\nname = "backout"\n')
    assert describe(tree / "src" / "backout") == f"backout {__version__}"
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t",
                    "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True)
    assert "(commit " in describe(tree / "src" / "backout")
