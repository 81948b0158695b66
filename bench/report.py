"""results.json and results.md from one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

JsonDict = dict[str, Any]


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _esc(text: str) -> str:
    """Text safe inside a markdown table cell (no column breaks, no HTML tags)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _cell(figure: JsonDict | None) -> str:
    if not figure:
        return "-"
    if figure["n"] == 1:
        return _num(figure["median"])
    return f"{_num(figure['median'])} ({_num(figure['min'])}-{_num(figure['max'])})"


def markdown(results: JsonDict) -> str:
    meta = results["meta"]
    lines = [
        "# backout benchmarks",
        "",
        f"- machine: {meta['machine']}",
        f"- date: {meta['date']}; wall time of the run: {meta['wall_seconds']:.0f} s",
        f"- command: `{meta['command']}`",
        f"- backout {meta['backout_commit']}; {meta['reps']} repetition(s) per figure: "
        "median (min-max)",
        *([f"- byte-compiled first, as an installer does: {', '.join(meta['byte_compiled'])}"]
          if meta.get("byte_compiled") else []),
        "",
        "| benchmark | figure | unit | backout | bare baseline | ratio | physical floor |",
        "|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name, bench in results["benchmarks"].items():
        if "error" in bench:
            lines.append(f"| {name} | **failed**: {_esc(bench['error'][:200])} | | | | | |")
            continue
        for i, row in enumerate(bench["rows"]):
            title = bench["title"] if i == 0 else ""
            base = _cell(row["baseline"])
            if row["baseline_label"]:
                base += f"<br><sub>{_esc(row['baseline_label'])}</sub>"
            fl = (f"{_num(row['floor']['value'])} {row['floor']['unit']}<br>"
                  f"<sub>{_esc(row['floor']['label'])}</sub>" if row["floor"] else "-")
            ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
            lines.append(f"| {title} | {_esc(row['name'])} | {row['unit']} | {_cell(row['backout'])} | "
                         f"{base} | {ratio} | {fl} |")
        notes += [f"- {bench['title']}: {n}" for n in bench["notes"]]
    lines += ["", "Ratios: backout / baseline of the medians; for MB/s higher is better, for "
              "times lower is better.", "", "## Notes", "", *notes, ""]
    return "\n".join(lines)


def write(results: JsonDict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "results.json", out / "results.md"
    js.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    md.write_text(markdown(results))
    return js, md
