"""The windowed sample store and the PromQL-like functions, with hand-computed values.

Expected values follow Prometheus' extrapolatedRate: the sampled increase is
stretched towards the window's edges (but not past the counter's zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from backout.policy.promtext import Sample, labels_of, parse
from backout.policy.series import (
    PROCESS_START,
    Point,
    Selector,
    SeriesStore,
    histogram_quantile,
    increase,
    latest,
    quantile_over_window,
    rate,
    ratio,
    sum_rate,
)

INF = math.inf


def pts(*pairs: tuple[float, float]) -> list[Point]:
    return [Point(t, v) for t, v in pairs]


def sample(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, labels_of(labels), value)


# --- rate / increase ---------------------------------------------------------------------

@pytest.mark.parametrize(("points", "expected"), [
    pytest.param(pts((15, 15), (30, 30), (45, 45), (60, 60)), 1.0,
                 id="steady 1/s, extrapolated to the window start"),
    pytest.param(pts((15, 10), (30, 20), (45, 5), (60, 15)), 25 * 60 / 45 / 60,
                 id="counter reset: 10 + (5 after reset) + 10 = 25 sampled"),
    pytest.param(pts((15, 1), (30, 16), (45, 31), (60, 46)), 46 / 60,
                 id="not extrapolated past the counter's zero"),
    pytest.param(pts((40, 100), (50, 110), (60, 120)), 25 / 60,
                 id="a gap at the start: extrapolate only half an interval"),
    pytest.param(pts((15, 5), (30, 5), (45, 5), (60, 5)), 0.0, id="flat counter"),
    pytest.param(pts((0, 0), (30, 30), (60, 60)), 1.0, id="a point exactly at the start is outside"),
    pytest.param(pts((-10, 1), (60, 2), (70, 3)), None, id="one point in the window is no rate"),
    pytest.param(pts((60, 1)), None, id="a single point"),
    pytest.param([], None, id="no points"),
    pytest.param(pts((15, 15), (30, math.nan), (45, 45), (60, 60)), 1.0, id="NaN points skipped"),
])
def test_rate(points: list[Point], expected: float | None) -> None:
    got = rate(points, end=60, window=60)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_increase_is_rate_times_window() -> None:
    points = pts((15, 10), (30, 20), (45, 5), (60, 15))
    assert increase(points, end=60, window=60) == pytest.approx(25 * 60 / 45)


def test_rate_at_a_later_time_sees_a_later_window() -> None:
    points = pts(*((t, 0.0 if t <= 60 else (t - 60) * 2.0) for t in range(0, 181, 15)))
    assert rate(points, end=60, window=60) == 0.0
    assert rate(points, end=180, window=60) == pytest.approx(2.0)


# --- selectors --------------------------------------------------------------------------

@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ('http_requests_total{status=~"5.."}', {"status": "503"}, True),
    ('http_requests_total{status=~"5.."}', {"status": "200"}, False),
    ('http_requests_total{status=~"5.."}', {"status": "5000"}, False),  # anchored
    ('http_requests_total{status!~"5.."}', {"status": "200"}, True),
    ('http_requests_total{status!="200"}', {"status": "200"}, False),
    ('http_requests_total{status="200", method="GET"}', {"status": "200", "method": "GET"}, True),
    ('http_requests_total{status="200",method="GET",}', {"status": "200", "method": "PUT"}, False),
    ('http_requests_total{x=""}', {"status": "200"}, True),  # a missing label is ""
    ("http_requests_total", {"anything": "x"}, True),
    ('http_requests_total{path="a,b\\"c"}', {"path": 'a,b"c'}, True),
])
def test_selector_matching(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert Selector.parse(selector).matches("http_requests_total", labels_of(labels)) is matches


def test_selector_checks_the_name_and_prints_back() -> None:
    sel = Selector.parse('  m{a=~"x|y" , b!="q\\"z"}  ')
    assert not sel.matches("other", labels_of({"a": "x"}))
    assert str(sel) == 'm{a=~"x|y",b!="q\\"z"}'
    assert Selector.parse(str(sel)) == sel


@pytest.mark.parametrize("text", [
    "", "{}", '{a="1"}', "m{a=1}", 'm{a=~"("}', 'm{a="1",,b="2"}', 'm{a=="1"}', "m{,}", "9m",
])
def test_invalid_selectors(text: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        Selector.parse(text)


# --- the store --------------------------------------------------------------------------

def scrape_every_15s(store: SeriesStore, target: str, until: float,
                     make: Callable[[float], list[Sample]]) -> None:
    for t in range(15, int(until) + 1, 15):
        store.add(target, t, make(t))


def test_store_drops_out_of_order_samples_and_prunes() -> None:
    store = SeriesStore(retention_seconds=30)
    assert store.add("a", 15, [sample("m", 1)]) == 1
    assert store.add("a", 15, [sample("m", 2)]) == 0  # same time
    assert store.add("a", 5, [sample("m", 3)]) == 0  # older
    store.add("a", 20, [sample("m", 4)])
    store.add("a", 45, [sample("m", 5), sample("n", 1)])
    # t=15 is at 45 - 30, outside any window ending at 45, and was pruned; t=20 is kept.
    assert store.select("a", Selector("m")) == {("m", ()): pts((20, 4), (45, 5))}
    store.add("a", 80, [sample("n", 2)])
    assert store.select("a", Selector("m")) == {}  # a series left empty is forgotten
    assert store.targets() == ("a",)
    assert store.select("missing-target", Selector("m")) == {}


def test_store_takes_samples_from_a_parsed_scrape() -> None:
    store = SeriesStore(retention_seconds=60)
    store.add("backend", 1, parse('x_total{a="1"} 3\nx_total{a="2"} 4\n').samples)
    assert set(store.select("backend", Selector.parse('x_total{a="2"}'))) == {
        ("x_total", (("a", "2"),))}


def test_store_needs_a_positive_retention() -> None:
    with pytest.raises(ValueError):
        SeriesStore(retention_seconds=0)


def requests(ok_per_s: float, errors_per_s: float) -> Callable[[float], list[Sample]]:
    def make(t: float) -> list[Sample]:
        out = [sample("http_requests_total", ok_per_s * t, status="200")]
        if errors_per_s:
            out.append(sample("http_requests_total", errors_per_s * t, status="500"))
            out.append(sample("http_requests_total", 0, status="503"))
        return out
    return make


FIVE_XX = Selector.parse('http_requests_total{status=~"5.."}')
ALL = Selector.parse("http_requests_total")


@pytest.mark.parametrize(("ok", "errors", "expected"), [
    pytest.param(3, 1, 0.25, id="one in four fails"),
    pytest.param(0, 2, 1.0, id="all fail"),
    pytest.param(4, 0, 0.0, id="no 5xx series at all is 0, not no data"),
    pytest.param(0, 0, None, id="no traffic is no data"),
])
def test_error_ratio(ok: float, errors: float, expected: float | None) -> None:
    store = SeriesStore(retention_seconds=120)
    scrape_every_15s(store, "backend", 60, requests(ok, errors))
    got = ratio(store, "backend", FIVE_XX, ALL, end=60, window=60)
    assert got == (None if expected is None else pytest.approx(expected))


def test_ratio_and_sum_rate_without_series() -> None:
    store = SeriesStore(retention_seconds=120)
    assert sum_rate(store, "backend", ALL, end=60, window=60) is None
    assert ratio(store, "backend", FIVE_XX, ALL, end=60, window=60) is None


def test_sum_rate_adds_the_matching_series() -> None:
    store = SeriesStore(retention_seconds=120)
    scrape_every_15s(store, "backend", 60, requests(3, 1))
    assert sum_rate(store, "backend", ALL, end=60, window=60) == pytest.approx(4.0)
    assert sum_rate(store, "backend", FIVE_XX, end=60, window=60) == pytest.approx(1.0)


# --- histogram_quantile -----------------------------------------------------------------

BUCKETS = [(0.1, 10.0), (0.5, 20.0), (1.0, 30.0), (INF, 40.0)]


@pytest.mark.parametrize(("q", "buckets", "expected"), [
    pytest.param(0.5, BUCKETS, 0.5, id="rank at a bucket's top"),
    pytest.param(0.25, BUCKETS, 0.1, id="first bucket starts at 0"),
    pytest.param(0.3, BUCKETS, 0.1 + 0.4 * 2 / 10, id="interpolated within a bucket"),
    pytest.param(0.1, BUCKETS, 0.04, id="interpolated within the first bucket"),
    pytest.param(0.95, BUCKETS, 1.0, id="rank in +Inf: the highest finite bound"),
    pytest.param(1.0, BUCKETS, 1.0, id="q=1"),
    pytest.param(0.0, BUCKETS, 0.0, id="q=0"),
    pytest.param(-0.1, BUCKETS, -INF, id="q<0"),
    pytest.param(1.1, BUCKETS, INF, id="q>1"),
    pytest.param(math.nan, BUCKETS, None, id="q=NaN"),
    pytest.param(0.5, list(reversed(BUCKETS)), 0.5, id="order does not matter"),
    pytest.param(0.5, BUCKETS[:-1], None, id="no +Inf bucket"),
    pytest.param(0.5, [(INF, 5.0)], None, id="only the +Inf bucket"),
    pytest.param(0.5, [(0.1, 0.0), (INF, 0.0)], None, id="no observations"),
    pytest.param(0.6, [(0.1, 10.0), (0.5, 8.0), (1.0, 15.0), (INF, 20.0)], 0.5 + 0.5 * 2 / 5,
                 id="non-monotonic counts take the running maximum"),
    pytest.param(0.2, [(-1.0, 5.0), (0.0, 10.0), (INF, 10.0)], -1.0,
                 id="a first bucket bound <= 0 is returned as is"),
    pytest.param(0.0, [(0.1, 0.0), (0.5, 5.0), (INF, 5.0)], None, id="q=0 on an empty bucket: NaN"),
])
def test_histogram_quantile(q: float, buckets: list[tuple[float, float]],
                            expected: float | None) -> None:
    got = histogram_quantile(q, buckets)
    if expected is None or math.isinf(expected):
        assert got == expected
    else:
        assert got == pytest.approx(expected)


def latency(handler: str, per_s: tuple[float, float, float]) -> Callable[[float], list[Sample]]:
    """Cumulative buckets le=0.1, 0.5, +Inf growing at ``per_s`` observations per second."""
    def make(t: float) -> list[Sample]:
        return [sample("http_request_duration_seconds_bucket", rate_ * t, le=le, handler=handler)
                for le, rate_ in zip(("0.1", "0.5", "+Inf"), per_s, strict=True)]
    return make


def two_handlers(t: float) -> list[Sample]:
    # /fast: 1, 2, 4 per s in le 0.1, 0.5, +Inf; /slow: 0, 1, 2 per s (nothing below 0.1).
    return latency("/fast", (1, 2, 4))(t) + latency("/slow", (0, 1, 2))(t)


# Over the window, summed by le: le=0.1: 60, le=0.5: 180, +Inf: 360 observations.
@pytest.mark.parametrize(("q", "selector", "expected"), [
    pytest.param(0.25, "http_request_duration_seconds", 0.1 + 0.4 * (90 - 60) / 120,
                 id="family name; handlers summed by le"),
    pytest.param(0.375, "http_request_duration_seconds_bucket", 0.1 + 0.4 * (135 - 60) / 120,
                 id="bucket name"),
    pytest.param(0.95, "http_request_duration_seconds", 0.5, id="P95 in +Inf"),
    pytest.param(0.25, 'http_request_duration_seconds{handler="/slow"}', 0.1 + 0.4 * 30 / 60,
                 id="matchers filter the buckets"),
    pytest.param(0.5, "nothing_here", None, id="no such histogram"),
])
def test_quantile_over_window(q: float, selector: str, expected: float | None) -> None:
    store = SeriesStore(retention_seconds=120)
    scrape_every_15s(store, "backend", 60, two_handlers)
    got = quantile_over_window(store, "backend", q, Selector.parse(selector), end=60, window=60)
    assert got == (None if expected is None else pytest.approx(expected))


def test_quantile_ignores_buckets_without_a_numeric_le() -> None:
    store = SeriesStore(retention_seconds=120)
    scrape_every_15s(store, "b", 60, lambda t: [*latency("/fast", (1, 2, 4))(t),
                                                sample("h_bucket", t, le="oops"),
                                                sample("h_bucket", t)])
    assert quantile_over_window(store, "b", 0.5, Selector("h"), end=60, window=60) is None
    assert quantile_over_window(store, "b", 0.25, Selector("http_request_duration_seconds"),
                                end=60, window=60) == pytest.approx(0.1)


# --- latest (gauges) --------------------------------------------------------------------

def gauges(store: SeriesStore) -> None:
    store.add("b", 10, [sample("mem", 50, pod="a"), sample("mem", 30, pod="b")])
    store.add("b", 40, [sample("mem", 70, pod="a"), sample("mem", math.nan, pod="c")])


@pytest.mark.parametrize(("aggregate", "max_age", "expected"), [
    pytest.param("sum", 60, 100.0, id="sum of the latest of each series"),
    pytest.param("max", 60, 70.0, id="max"),
    pytest.param("min", 60, 30.0, id="min"),
    pytest.param("avg", 60, 50.0, id="avg"),
    pytest.param("sum", 25, 70.0, id="a stale series is left out"),
    pytest.param("sum", 5, None, id="nothing fresh is no data"),
])
def test_latest(aggregate: str, max_age: float, expected: float | None) -> None:
    store = SeriesStore(retention_seconds=300)
    gauges(store)
    got = latest(store, "b", Selector("mem"), end=45, max_age=max_age,
                 aggregate=aggregate)  # type: ignore[arg-type]
    assert got == expected


# --- a target whose process started again -----------------------------------------------

def counters(ok: float, errors: float) -> list[Sample]:
    """What a service's /metrics says: its requests since its process started."""
    return [sample("http_requests_total", ok, status="200"),
            *([sample("http_requests_total", errors, status="500")] if errors else [])]


def counter_names(name: str) -> bool:
    return name.endswith("_total")


def replaced(store: SeriesStore, *, until: float) -> None:
    """A healthy process (40 requests a second) scraped every 2 s until t=20; a new one
    (a broken release: 60 % of 40 a second fail) started at t=21, scraped from t=22."""
    for t in range(2, 21, 2):
        store.add("backend", t, counters(40 * t, 0), only_grows=counter_names)
    for t in range(22, int(until) + 1, 2):
        life = t - 21
        store.add("backend", t, counters(16 * life, 24 * life), only_grows=counter_names)


def test_a_new_process_is_rated_on_its_own_from_its_first_scrape() -> None:
    store = SeriesStore(retention_seconds=60)
    replaced(store, until=22)
    window = store.window_since_restart("backend", end=22, window=10)
    assert window == 2  # cut at t=20, the scrape before the restart
    assert ratio(store, "backend", FIVE_XX, ALL, end=22, window=window) == pytest.approx(0.6)
    # over the whole window the old process's healthy requests hide the failures
    diluted = ratio(store, "backend", FIVE_XX, ALL, end=22, window=10)
    assert diluted is not None and diluted < 0.2
    # both series of the new process start from a zero just after t=20
    assert store.select("backend", ALL)[("http_requests_total", labels_of({"status": "500"}))] \
        == pts((20.001, 0), (22, 24))


def test_the_cut_window_grows_back_to_the_whole_one() -> None:
    store = SeriesStore(retention_seconds=60)
    replaced(store, until=40)
    assert store.window_since_restart("backend", end=26, window=10) == 6
    assert ratio(store, "backend", FIVE_XX, ALL, end=26, window=6) == pytest.approx(0.6)
    assert store.window_since_restart("backend", end=30, window=10) == 10  # t=20 is at the edge
    assert store.window_since_restart("backend", end=40, window=10) == 10
    assert store.window_since_restart("frontend", end=40, window=10) == 10  # never scraped


@pytest.mark.parametrize("only_grows", [
    pytest.param(None, id="no counters named: nothing is a restart"),
    pytest.param(lambda name: False, id="a shrinking gauge is no restart"),
])
def test_only_a_shrinking_counter_is_a_restart(only_grows: Callable[[str], bool] | None) -> None:
    store = SeriesStore(retention_seconds=60)
    store.add("backend", 2, counters(80, 0), only_grows=only_grows)
    store.add("backend", 4, counters(10, 5), only_grows=only_grows)
    assert store.window_since_restart("backend", end=4, window=10) == 10
    assert store.select("backend", FIVE_XX)[("http_requests_total",
                                             labels_of({"status": "500"}))] == pts((4, 5))


def test_a_first_scrape_or_a_growing_counter_is_no_restart() -> None:
    store = SeriesStore(retention_seconds=60)
    store.add("backend", 2, counters(0, 0), only_grows=counter_names)  # nothing before it
    store.add("backend", 4, counters(80, 3), only_grows=counter_names)  # a new series too
    store.add("backend", 6, counters(80, 3), only_grows=counter_names)  # unchanged
    assert store.window_since_restart("backend", end=6, window=10) == 10
    assert len(store.select("backend", ALL)[("http_requests_total",
                                             labels_of({"status": "200"}))]) == 3


def key(status: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("http_requests_total", labels_of({"status": status}))


def test_a_series_given_twice_in_one_scrape_is_not_a_restart() -> None:
    """The first copy counts (a misconfigured multi-process client prints two); the
    second, smaller one, compared with it, looked like a restart on every scrape."""
    store = SeriesStore(retention_seconds=60)
    for t in (2, 4, 6):
        store.add("backend", t, [*counters(40 * t, 0), sample("http_requests_total", 3,
                                                               status="200")],
                  only_grows=counter_names)
    assert store.window_since_restart("backend", end=6, window=10) == 10
    assert store.select("backend", ALL)[key("200")] == pts((2, 80), (4, 160), (6, 240))


def test_one_counter_going_down_beside_others_growing_is_not_a_restart() -> None:
    """A gauge named like a counter, a series removed and made again: one down, two up."""
    store = SeriesStore(retention_seconds=60)
    for t, queue in ((2, 50), (4, 10)):
        store.add("backend", t, [*counters(40 * t, 4 * t),
                                 sample("queue_total", queue)], only_grows=counter_names)
    assert store.window_since_restart("backend", end=4, window=10) == 10
    assert store.select("backend", ALL)[key("500")] == pts((2, 8), (4, 16))  # no zero


@pytest.mark.parametrize(("started", "restarted"), [
    pytest.param(1000.0, False, id="the same process: counters that went down do not count"),
    pytest.param(1019.5, True, id="a new process: its start time moved"),
    pytest.param(990.0, False, id="an earlier start: another replica, not a restart"),
])
def test_the_process_start_time_says_it_when_exported(started: float,
                                                      restarted: bool) -> None:
    store = SeriesStore(retention_seconds=60)
    store.add("backend", 18, [*counters(800, 0), sample(PROCESS_START, 1000.0)],
              only_grows=counter_names)
    store.add("backend", 20, [*counters(10, 5), sample(PROCESS_START, started)],
              only_grows=counter_names)
    assert (store.window_since_restart("backend", end=20, window=10) == 2) is restarted


def test_counters_first_seen_after_the_restart_start_from_its_zero() -> None:
    """The new process's first 5xx come after its first scrape: they count from the
    cut, like its 200s, not from their own second point."""
    store = SeriesStore(retention_seconds=60)
    for t in range(2, 21, 2):
        store.add("backend", t, counters(40 * t, 0), only_grows=counter_names)
    store.add("backend", 22, counters(40, 0), only_grows=counter_names)  # restarted
    store.add("backend", 24, counters(56, 24), only_grows=counter_names)  # 5xx from here
    assert store.select("backend", FIVE_XX)[key("500")] == pts((20.001, 0), (24, 24))
    assert ratio(store, "backend", FIVE_XX, ALL, end=24, window=4) == pytest.approx(0.3)


def test_a_series_of_the_old_process_coming_back_lower_is_not_a_second_restart() -> None:
    store = SeriesStore(retention_seconds=60)
    for t in range(2, 21, 2):
        store.add("backend", t, counters(40 * t, 2 * t), only_grows=counter_names)
    store.add("backend", 22, counters(40, 0), only_grows=counter_names)  # no 5xx yet
    store.add("backend", 24, counters(120, 6), only_grows=counter_names)  # 6 < 40 of old
    assert store.window_since_restart("backend", end=24, window=10) == 4  # cut at 20 still
    assert store.select("backend", FIVE_XX)[key("500")][-2:] == pts((20.001, 0), (24, 6))
    assert ratio(store, "backend", FIVE_XX, ALL, end=24, window=4) == pytest.approx(6 / 126)


def test_a_crash_loop_is_cut_at_each_restart() -> None:
    store = SeriesStore(retention_seconds=60)
    store.add("backend", 2, counters(80, 0), only_grows=counter_names)
    store.add("backend", 4, counters(160, 0), only_grows=counter_names)
    store.add("backend", 6, counters(4, 6), only_grows=counter_names)  # restarted
    store.add("backend", 8, counters(1, 3), only_grows=counter_names)  # and again
    assert store.window_since_restart("backend", end=8, window=10) == 2
    assert ratio(store, "backend", FIVE_XX, ALL, end=8, window=2) == pytest.approx(0.75)


def test_a_counter_that_grew_across_a_cut_gets_no_zero() -> None:
    """A start time that jumps (a clock step) in a process whose counters keep growing
    cuts the window, but no counter counts its whole life as the window's increase:
    the growing ones get no zero (a rate over the cut then waits for their second
    point), a zero one does (nothing to lose)."""
    store = SeriesStore(retention_seconds=60)
    store.add("backend", 18, [*counters(800, 0), sample("queue_total", 0),
                              sample(PROCESS_START, 1000.0)], only_grows=counter_names)
    store.add("backend", 20, [*counters(880, 0), sample("queue_total", 5),
                              sample(PROCESS_START, 1006.0)], only_grows=counter_names)
    assert store.window_since_restart("backend", end=20, window=10) == 2
    assert store.select("backend", ALL)[key("200")] == pts((18, 800), (20, 880))
    assert sum_rate(store, "backend", ALL, end=20, window=2) is None
    assert store.select("backend", Selector("queue_total"))[("queue_total", ())] == pts(
        (18, 0), (18.001, 0), (20, 5))


def test_one_of_two_counters_going_down_is_not_a_restart() -> None:
    store = SeriesStore(retention_seconds=60)
    store.add("backend", 2, [*counters(80, 0), sample("jobs_total", 9)],
              only_grows=counter_names)
    store.add("backend", 4, [*counters(160, 0), sample("jobs_total", 1)],
              only_grows=counter_names)  # a series removed and made again
    assert store.window_since_restart("backend", end=4, window=10) == 10
