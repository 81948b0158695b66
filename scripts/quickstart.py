"""The README's quick-start commands, read from the README itself, so the commands
CI and the tests run are the ones a newcomer reads (they cannot drift apart).

    python3 scripts/quickstart.py          # both commands, one per line
    python3 scripts/quickstart.py --test   # the second one: what .ci/run runs

The quick start is the first ```bash block under the heading "## Quick start":
exactly two commands (comments after # are dropped), the first sets up and runs the
demo, the second runs the tests. Standard library only: .ci/run calls it before
any environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Quick start"


class QuickStartError(ValueError):
    pass


def commands(text: str) -> list[str]:
    start = text.find(f"\n{HEADING}\n")
    if start < 0:
        raise QuickStartError(f'README has no "{HEADING}" section')
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    if block is None:
        raise QuickStartError(f'"{HEADING}" has no ```bash block')
    found = [line.split(" #", 1)[0].strip() for line in block.group(1).splitlines()]
    found = [line for line in found if line and not line.startswith("#")]
    if len(found) != 2:
        raise QuickStartError(f'"{HEADING}" must give exactly two commands, it gives '
                              f"{len(found)}: {found}")
    return found


def main(argv: list[str]) -> int:
    try:
        found = commands(README.read_text(encoding="utf-8"))
    except QuickStartError as exc:
        print(f"quickstart: {exc}", file=sys.stderr)
        return 2
    print(found[1] if argv[1:] == ["--test"] else "\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
