"""The Prometheus text exposition format (version 0.0.4) into typed samples.

The monitor scrapes services' ``/metrics`` directly, with no Prometheus server
in between, so it must read the format itself. A service under a bad release
may well emit garbage; one bad line must never hide the good ones, nor crash
the monitor, so each unparseable line is reported as a ``BadLine`` and parsing
goes on.

What is understood: ``# HELP`` and ``# TYPE`` lines (other comments are
ignored), sample lines ``name{label="value",...} value [timestamp]`` with the
escapes ``\\\\``, ``\\"`` and ``\\n`` in label values, the special values
``NaN``, ``+Inf`` and ``-Inf``, and an OpenMetrics exemplar (`` # {...} v``)
after the value, which is dropped. Histogram buckets must carry a numeric
``le`` label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
"""Label pairs sorted by name: hashable, and equal for equal label sets."""

METRIC_TYPES = ("counter", "gauge", "histogram", "summary", "untyped", "unknown")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FLOAT = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])"
)
_TIMESTAMP = re.compile(r"-?\d+")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_SUMMARY_SUFFIXES = ("_sum", "_count")


@dataclass(frozen=True)
class Sample:
    """One sample line: a metric name, its labels, a value and an optional timestamp (ms)."""

    name: str
    labels: Labels
    value: float
    timestamp_ms: int | None = None

    def label(self, key: str) -> str | None:
        for name, value in self.labels:
            if name == key:
                return value
        return None

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class BadLine:
    """A line that could not be understood, and why (1-based line number)."""

    lineno: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.reason}: {self.text[:120]!r}"


@dataclass(frozen=True)
class Exposition:
    """The result of parsing one scrape."""

    samples: tuple[Sample, ...]
    types: Mapping[str, str] = field(default_factory=dict)  # family name -> METRIC_TYPES
    help: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[BadLine, ...] = ()

    def type_of(self, sample_name: str) -> str:
        """The declared type of the family a sample belongs to ("untyped" if none)."""
        return self.types.get(family_of(sample_name, self.types), "untyped")

    def only_grows(self, sample_name: str) -> bool:
        """Whether the sample is a counter that only grows while its process lives (a
        counter, a histogram's buckets and count, a summary's count; an untyped
        ``*_total``), so that a smaller value means the process started again. A
        ``_sum`` is left out: negative observations may shrink it."""
        kind = self.type_of(sample_name)
        if kind == "counter":
            return True
        if kind == "histogram":
            return sample_name.endswith(("_bucket", "_count"))
        if kind == "summary":
            return sample_name.endswith("_count")
        return kind in ("untyped", "unknown") and sample_name.endswith("_total")


class _LineError(ValueError):
    pass


def labels_of(mapping: Mapping[str, str]) -> Labels:
    """A ``Labels`` tuple from a mapping (sorted, so equal sets compare equal)."""
    return tuple(sorted(mapping.items()))


def family_of(sample_name: str, types: Mapping[str, str]) -> str:
    """The family a sample belongs to: ``foo_bucket`` is in histogram ``foo``."""
    if sample_name in types:
        return sample_name
    for suffix in _HISTOGRAM_SUFFIXES:
        base = sample_name.removesuffix(suffix)
        if base != sample_name and types.get(base) == "histogram":
            return base
        if base != sample_name and suffix in _SUMMARY_SUFFIXES and types.get(base) == "summary":
            return base
    return sample_name


def parse_value(text: str) -> float:
    """A sample value as Prometheus reads it: Go float syntax plus NaN and ±Inf."""
    if not _FLOAT.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def parse(text: str) -> Exposition:
    """Parse a whole scrape; bad lines are collected in ``errors``, never raised."""
    samples: list[Sample] = []
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    errors: list[BadLine] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            if line.startswith("#"):
                _parse_comment(line, types, helps)
            else:
                sample = _parse_sample(line)
                _check_sample(sample, types)
                samples.append(sample)
        except _LineError as exc:
            errors.append(BadLine(lineno, raw, str(exc)))
    return Exposition(tuple(samples), types, helps, tuple(errors))


def _parse_comment(line: str, types: dict[str, str], helps: dict[str, str]) -> None:
    parts = line[1:].strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in ("HELP", "TYPE"):
        return  # an ordinary comment
    keyword, name = parts[0], parts[1]
    rest = parts[2].strip() if len(parts) > 2 else ""
    if not _NAME.fullmatch(name):
        raise _LineError(f"invalid metric name {name!r} in # {keyword}")
    if keyword == "HELP":
        helps[name] = re.sub(r"\\(.)", _unescape_help, rest)
        return
    if rest not in METRIC_TYPES:
        raise _LineError(f"unknown metric type {rest!r}")
    if name in types and types[name] != rest:
        raise _LineError(f"second # TYPE for {name}")
    types[name] = rest


def _unescape_help(match: re.Match[str]) -> str:
    char = match.group(1)
    return {"n": "\n", "\\": "\\"}.get(char, "\\" + char)


def _parse_sample(line: str) -> Sample:
    match = _NAME.match(line)
    if not match:
        raise _LineError("does not start with a metric name")
    name, pos = match.group(), match.end()
    labels: Labels = ()
    if line[_skip_spaces(line, pos):].startswith("{"):
        labels, pos = _parse_labels(line, _skip_spaces(line, pos) + 1)
    rest = line[pos:]
    if rest and not rest[0].isspace():
        raise _LineError(f"unexpected {rest[0]!r} after the metric name")
    fields = rest.split("#", 1)[0].split()  # drop an OpenMetrics exemplar
    if not fields:
        raise _LineError("no value")
    try:
        value = parse_value(fields[0])
    except ValueError as exc:
        raise _LineError(str(exc)) from None
    if len(fields) > 2:
        raise _LineError("trailing text after the timestamp")
    timestamp = None
    if len(fields) == 2:
        if not _TIMESTAMP.fullmatch(fields[1]):
            raise _LineError(f"invalid timestamp {fields[1]!r}")
        timestamp = int(fields[1])
    return Sample(name, labels, value, timestamp)


def _parse_labels(line: str, pos: int) -> tuple[Labels, int]:
    """Labels from just after ``{``; returns them and the position after ``}``."""
    found: dict[str, str] = {}
    while True:
        pos = _skip_spaces(line, pos)
        if pos < len(line) and line[pos] == "}":
            return labels_of(found), pos + 1
        match = _LABEL_NAME.match(line, pos)
        if not match:
            raise _LineError("invalid label name")
        key = match.group()
        pos = _skip_spaces(line, match.end())
        if line[pos:pos + 1] != "=":
            raise _LineError(f"expected = after label {key}")
        pos = _skip_spaces(line, pos + 1)
        if line[pos:pos + 1] != '"':
            raise _LineError(f"label {key}: value must be quoted")
        value, pos = _parse_quoted(line, pos + 1)
        if key in found:
            raise _LineError(f"duplicate label {key}")
        found[key] = value
        pos = _skip_spaces(line, pos)
        if line[pos:pos + 1] == ",":
            pos += 1
        elif line[pos:pos + 1] != "}":
            raise _LineError("expected , or } in labels")


def _parse_quoted(line: str, pos: int) -> tuple[str, int]:
    """A label value from just after its opening quote; returns it and the position after."""
    out: list[str] = []
    while pos < len(line):
        char = line[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            escaped = line[pos + 1:pos + 2]
            if escaped not in _ESCAPES:
                raise _LineError(f"invalid escape \\{escaped} in label value")
            out.append(_ESCAPES[escaped])
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise _LineError("unterminated label value")


def _skip_spaces(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _check_sample(sample: Sample, types: Mapping[str, str]) -> None:
    """Checks that need the declared type: buckets need a numeric ``le``."""
    family = family_of(sample.name, types)
    if types.get(family) != "histogram" or not sample.name.endswith("_bucket"):
        return
    le = sample.label("le")
    if le is None:
        raise _LineError("histogram bucket without an le label")
    try:
        bound = parse_value(le)
    except ValueError:
        raise _LineError(f"histogram bucket with le={le!r}, not a number") from None
    if math.isnan(bound):
        raise _LineError("histogram bucket with le=NaN")
