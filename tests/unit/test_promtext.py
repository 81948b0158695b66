"""The Prometheus text format parser: typed samples, and bad lines reported, never raised."""

from __future__ import annotations

import math

import pytest

from backout.policy.promtext import Sample, family_of, labels_of, parse, parse_value

SCRAPE = """\
# HELP http_requests_total Requests served.\\nBy status.
# TYPE http_requests_total counter
http_requests_total{method="GET",status="200"} 1027 1395066363000
http_requests_total{method="POST",status="500"} 3
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.5e+07
# a free comment
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 24054
http_request_duration_seconds_bucket{le="0.5"} 129389
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
"""


def test_a_typical_scrape() -> None:
    result = parse(SCRAPE)
    assert result.errors == ()
    assert len(result.samples) == 8
    first = result.samples[0]
    assert first == Sample("http_requests_total", (("method", "GET"), ("status", "200")),
                           1027.0, 1395066363000)
    assert result.help["http_requests_total"] == "Requests served.\nBy status."
    assert result.types == {"http_requests_total": "counter",
                            "process_resident_memory_bytes": "gauge",
                            "http_request_duration_seconds": "histogram"}
    assert result.type_of("http_request_duration_seconds_bucket") == "histogram"
    assert result.type_of("http_request_duration_seconds_count") == "histogram"
    assert result.type_of("process_resident_memory_bytes") == "gauge"
    assert result.type_of("never_declared") == "untyped"
    assert result.samples[5].label("le") == "+Inf"
    assert result.samples[2].value == 2.5e7


@pytest.mark.parametrize(("line", "name", "labels", "value"), [
    pytest.param('m{path="/a\\"b\\"",x="back\\\\slash"} 1', "m",
                 {"path": '/a"b"', "x": "back\\slash"}, 1.0, id="escaped quote and backslash"),
    pytest.param('m{msg="line\\nbreak"} 2', "m", {"msg": "line\nbreak"}, 2.0, id="escaped newline"),
    pytest.param('m{a="x,y}z"} 3', "m", {"a": "x,y}z"}, 3.0, id="comma and brace in a value"),
    pytest.param('m{a="1",} 4', "m", {"a": "1"}, 4.0, id="trailing comma"),
    pytest.param('m { a = "1" , b="2" } 5', "m", {"a": "1", "b": "2"}, 5.0, id="spaces"),
    pytest.param("m{} 6", "m", {}, 6.0, id="empty braces"),
    pytest.param('m{a="#"} 7 # {trace_id="abc"} 1.0', "m", {"a": "#"}, 7.0,
                 id="exemplar dropped, # inside a label kept"),
    pytest.param("ns:sub_total -1.5e-3", "ns:sub_total", {}, -0.0015, id="colon name, exponent"),
    pytest.param("m\t8\t-100", "m", {}, 8.0, id="tabs and a negative timestamp"),
    pytest.param('m{a="ünïcödé"} 9', "m", {"a": "ünïcödé"}, 9.0, id="utf-8"),
])
def test_sample_lines(line: str, name: str, labels: dict[str, str], value: float) -> None:
    result = parse(line)
    assert result.errors == ()
    (sample,) = result.samples
    assert (sample.name, sample.label_dict, sample.value) == (name, labels, value)


@pytest.mark.parametrize(("text", "check"), [
    ("m NaN", math.isnan),
    ("m +Inf", lambda v: v == math.inf),
    ("m -Inf", lambda v: v == -math.inf),
    ("m Inf", lambda v: v == math.inf),
    ("m nan", math.isnan),
])
def test_special_values(text: str, check: object) -> None:
    (sample,) = parse(text).samples
    assert callable(check) and check(sample.value)


@pytest.mark.parametrize(("line", "reason"), [
    ("this is not a metric line at all", "not a number: 'is'"),
    ("m", "no value"),
    ("m abc", "not a number: 'abc'"),
    ("m 1_000", "not a number"),  # Python's float() would accept it; Prometheus does not
    ("m 1 2 3", "trailing text after the timestamp"),
    ("m 1 1.5", "invalid timestamp"),
    ('m{a="1" 1', "expected , or }"),
    ('m{a="1} 1', "unterminated label value"),
    ("m{a=1} 1", "value must be quoted"),
    ('m{a="\\x"} 1', "invalid escape"),
    ('m{a="1",a="2"} 1', "duplicate label a"),
    ('m{1a="1"} 1', "invalid label name"),
    ('m{a"1"} 1', "expected = after label a"),
    ("{a=\"1\"} 1", "does not start with a metric name"),
    ('m{a="1"}x 1', "unexpected 'x'"),
    ("# TYPE m sometype", "unknown metric type 'sometype'"),
    ("# TYPE 9m counter", "invalid metric name"),
])
def test_garbage_lines_are_reported_with_their_reason(line: str, reason: str) -> None:
    result = parse(f"good_before 1\n{line}\ngood_after 2\n")
    assert [s.name for s in result.samples] == ["good_before", "good_after"]
    (error,) = result.errors
    assert error.lineno == 2
    assert error.text == line
    assert reason in error.reason
    assert "line 2:" in str(error)


@pytest.mark.parametrize(("bucket", "reason"), [
    ('h_bucket{x="1"} 1', "without an le label"),
    ('h_bucket{le="high"} 1', "not a number"),
    ('h_bucket{le="NaN"} 1', "le=NaN"),
])
def test_histogram_buckets_need_a_numeric_le(bucket: str, reason: str) -> None:
    result = parse(f"# TYPE h histogram\n{bucket}\nh_count 1\n")
    assert [s.name for s in result.samples] == ["h_count"]
    assert reason in result.errors[0].reason


def test_bucket_without_le_is_fine_when_not_a_histogram() -> None:
    assert parse('other_bucket{x="1"} 1').errors == ()


def test_conflicting_type_lines() -> None:
    result = parse("# TYPE m counter\n# TYPE m gauge\nm 1\n")
    assert result.types["m"] == "counter"
    assert "second # TYPE" in result.errors[0].reason


def test_comments_blank_lines_and_crlf() -> None:
    result = parse("# just a comment\n\n   \n#\n# HELP\nm 1\r\nn 2\r\n")
    assert result.errors == ()
    assert [(s.name, s.value) for s in result.samples] == [("m", 1.0), ("n", 2.0)]


def test_help_unescapes_only_backslash_and_newline() -> None:
    result = parse("# HELP m a\\\\nb \\n c \\t\n")
    assert result.help["m"] == "a\\nb \n c \\t"


def test_empty_and_binary_garbage_never_raise() -> None:
    assert parse("").samples == ()
    result = parse("\x00\x01\x02 garbage\n\ufffd\ufffd 1\n")
    assert result.samples == ()
    assert len(result.errors) == 2


def test_family_of() -> None:
    types = {"h": "histogram", "s": "summary", "c": "counter"}
    assert family_of("h_bucket", types) == "h"
    assert family_of("h_sum", types) == "h"
    assert family_of("s_count", types) == "s"
    assert family_of("s_bucket", types) == "s_bucket"  # summaries have no buckets
    assert family_of("c_total", types) == "c_total"


def test_labels_are_sorted_so_equal_sets_compare_equal() -> None:
    a = parse('m{b="2",a="1"} 1').samples[0]
    b = parse('m{a="1",b="2"} 1').samples[0]
    assert a.labels == b.labels == labels_of({"a": "1", "b": "2"})


@pytest.mark.parametrize("text", ["1", "-1.5", ".5", "5.", "1e3", "+Inf", "NaN", "-inf"])
def test_parse_value_accepts(text: str) -> None:
    parse_value(text)


@pytest.mark.parametrize("text", ["", "1_0", "0x10", "one", "1e", "--1", "infinite"])
def test_parse_value_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a number"):
        parse_value(text)


@pytest.mark.parametrize(("name", "grows"), [
    ("jobs_total", True),  # a declared counter, whatever its name
    ("jobs_done", True),
    ("latency_bucket", True),  # a histogram's buckets and count
    ("latency_count", True),
    ("latency_sum", False),  # negative observations may shrink a sum
    ("rpc_count", True),  # a summary's count, not its quantiles or sum
    ("rpc", False),
    ("rpc_sum", False),
    ("temperature", False),  # a gauge goes down as it likes
    ("temperature_total", False),
    ("untyped_total", True),  # no TYPE line: the name says counter
    ("untyped_thing", False),
])
def test_only_grows_tells_counters_by_their_type_or_name(name: str, grows: bool) -> None:
    page = parse("# TYPE jobs_total counter\n# TYPE jobs_done counter\n"
                 "# TYPE latency histogram\n# TYPE rpc summary\n"
                 "# TYPE temperature gauge\n# TYPE temperature_total gauge\n")
    assert page.only_grows(name) is grows
