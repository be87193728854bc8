"""The load meter, pure: rates, windows, resets, re-created links, missing links, rounding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.load.counters import LinkCounters
from nodeagent.load.meter import (
    PROBLEM_CAPACITY_UNKNOWN,
    PROBLEM_COUNTERS_UNREADABLE,
    PROBLEM_INTERFACE_MISSING,
    PROBLEM_NO_DATA,
    LoadReport,
    Meter,
    MeterConfig,
    Sample,
    coarsen,
)

MBIT = 1_000_000
GBIT = 1000 * MBIT
MB = 125_000  # bytes in one megabit


def cfg(
    capacity: int | None = GBIT,
    window: float = 10.0,
    resolution: float = 1.0,
    interfaces: tuple[str, ...] = ("eth0",),
) -> MeterConfig:
    return MeterConfig(interfaces, capacity, window, resolution)


# (time, ifindex or None for absent, rx bytes, tx bytes, cpu percent)
Step = tuple[float, int | None, int, int, float | None]


def run(config: MeterConfig, steps: Sequence[Step], speed: int | None = None) -> list[LoadReport]:
    meter = Meter(config)
    reports = []
    for t, index, rx, tx, cpu in steps:
        link = None if index is None else LinkCounters(index, rx, tx)
        speeds = {"eth0": speed} if speed is not None else {}
        reports.append(meter.add(Sample(t, {"eth0": link}, cpu, speeds)))
    return reports


def steady(mbit_rx: float, mbit_tx: float, seconds: int, start: int = 0) -> list[Step]:
    return [
        (float(t), 2, int(t * mbit_rx * MB), int(t * mbit_tx * MB), 10.0)
        for t in range(start, start + seconds + 1)
    ]


@dataclass(frozen=True)
class Case:
    name: str
    config: MeterConfig
    steps: list[Step]
    rx_bps: int | None
    tx_bps: int | None
    link_percent: float | None
    cpu_percent: float | None
    percent: float | None
    problems: tuple[str, ...] = ()
    speed: int | None = None


CASES = [
    Case("steady", cfg(), steady(370, 363, 12), 370 * MBIT, 360 * MBIT, 37, 10, 37),
    Case(
        "rounded to 1% of capacity, half up",
        cfg(),
        steady(374.9, 375, 12),
        370 * MBIT,
        380 * MBIT,
        38,
        10,
        38,
    ),
    Case(
        "quiet server shows zero",
        cfg(),
        steady(3, 1, 12),
        0,
        0,
        0,
        10,
        10,
    ),
    Case(
        "fine resolution",
        cfg(capacity=100 * MBIT, resolution=0.1),
        steady(37.04, 1, 12),
        37_000_000,
        1_000_000,
        37.0,
        10.0,
        37.0,
    ),
    Case(
        "cpu dominates",
        cfg(),
        [(float(t), 2, t * 10 * MB, t * MB, 81.4) for t in range(5)],
        10 * MBIT,
        0,
        1,
        81,
        81,
    ),
    Case(
        "first sample is only a baseline",
        cfg(),
        [(0.0, 2, 10**9, 10**9, None)],
        None,
        None,
        None,
        None,
        None,
        (PROBLEM_NO_DATA,),
    ),
    Case(
        "counter reset is left out, no negative, no spike",
        cfg(window=4),
        [
            (0.0, 2, 0, 0, 5.0),
            (1.0, 2, 100 * MB, 50 * MB, 5.0),
            (2.0, 2, 200 * MB, 100 * MB, 5.0),
            (3.0, 2, 7 * MB, 3 * MB, 5.0),  # driver reset: counters restart from zero
            (4.0, 2, 107 * MB, 53 * MB, 5.0),
        ],
        100 * MBIT,
        50 * MBIT,
        10,
        5,
        10,
    ),
    Case(
        "re-created link with higher counters is not a spike",
        cfg(window=4),
        [
            (0.0, 2, 0, 0, 5.0),
            (1.0, 2, 100 * MB, 100 * MB, 5.0),
            (2.0, 2, 200 * MB, 200 * MB, 5.0),
            # Same name, new ifindex; its counters happen to be far above the old ones.
            (3.0, 9, 90_000 * MB, 90_000 * MB, 5.0),
            (4.0, 9, 90_100 * MB, 90_100 * MB, 5.0),
        ],
        100 * MBIT,
        100 * MBIT,
        10,
        5,
        10,
    ),
    Case(
        "missing interface degrades and drops its history",
        cfg(window=4),
        [
            (0.0, 2, 0, 0, 5.0),
            (1.0, 2, 100 * MB, 100 * MB, 5.0),
            (2.0, None, 0, 0, 5.0),
        ],
        None,
        None,
        None,
        5,
        5,
        (PROBLEM_INTERFACE_MISSING,),
    ),
    Case(
        "back after missing: fresh baseline, then ok",
        cfg(window=4),
        [
            (0.0, 2, 0, 0, 5.0),
            (1.0, 2, 100 * MB, 100 * MB, 5.0),
            (2.0, None, 0, 0, 5.0),
            (3.0, 5, 10 * MB, 10 * MB, 5.0),
            (4.0, 5, 60 * MB, 30 * MB, 5.0),
        ],
        50 * MBIT,
        20 * MBIT,
        5,
        5,
        5,
    ),
    Case(
        "window average, older intervals expire",
        cfg(window=2),
        [
            (0.0, 2, 0, 0, 90.0),
            (1.0, 2, 900 * MB, 0, 90.0),  # expires from the 2 s window at t=3
            (2.0, 2, 1000 * MB, 0, 10.0),
            (3.0, 2, 1100 * MB, 0, 10.0),
        ],
        100 * MBIT,
        0,
        10,
        10,
        10,
    ),
    Case(
        "window clips an interval that straddles its start",
        cfg(window=2),
        [
            (0.0, 2, 0, 0, 0.0),
            (2.0, 2, 400 * MB, 0, 0.0),  # 200 Mbit/s over (0, 2]
            (3.0, 2, 500 * MB, 0, 0.0),  # 100 Mbit/s over (2, 3]; window (1, 3]
        ],
        150 * MBIT,
        0,
        15,
        0,
        15,
    ),
    Case(
        "capacity auto from link speed",
        cfg(capacity=None),
        steady(37, 1, 5),
        37 * MBIT,
        1 * MBIT,
        37,
        10,
        37,
        speed=100 * MBIT,
    ),
    Case(
        "capacity auto without a speed publishes no rates",
        cfg(capacity=None),
        steady(37, 1, 5),
        None,
        None,
        None,
        10,
        10,
        (PROBLEM_CAPACITY_UNKNOWN,),
    ),
    Case(
        "over capacity is reported as measured",
        cfg(capacity=100 * MBIT),
        steady(150, 0, 3),
        150 * MBIT,
        0,
        150,
        10,
        150,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_meter_table(case: Case) -> None:
    report = run(case.config, case.steps, case.speed)[-1]
    assert report.rx_bps == case.rx_bps
    assert report.tx_bps == case.tx_bps
    assert report.link_percent == case.link_percent
    assert report.cpu_percent == case.cpu_percent
    assert report.percent == case.percent
    assert report.problems == case.problems
    assert report.status == ("degraded" if case.problems else "ok")


def test_unreadable_counters_degrade_and_do_not_shorten_the_next_interval() -> None:
    meter = Meter(cfg(window=10))
    link = LinkCounters(2, 0, 0)
    meter.add(Sample(0.0, {"eth0": link}, 1.0))
    bad = meter.add(Sample(1.0, {}, 1.0, counters_ok=False))
    assert bad.problems == (PROBLEM_COUNTERS_UNREADABLE,)
    # Read again at t=2: 200 MB moved over 2 s, not over the 1 s since the failed sample.
    ok = meter.add(Sample(2.0, {"eth0": LinkCounters(2, 200 * MB, 0)}, 1.0))
    assert ok.problems == ()
    assert ok.rx_bps == 100 * MBIT


def test_time_going_backwards_is_ignored() -> None:
    meter = Meter(cfg())
    meter.add(Sample(10.0, {"eth0": LinkCounters(2, 0, 0)}, 1.0))
    good = meter.add(Sample(11.0, {"eth0": LinkCounters(2, 100 * MB, 0)}, 1.0))
    again = meter.add(Sample(10.5, {"eth0": LinkCounters(2, 10**12, 0)}, 1.0))
    assert again == good


def test_two_uplinks_add_up_and_one_missing_degrades() -> None:
    meter = Meter(cfg(interfaces=("eth0", "eth1"), window=5))
    meter.add(Sample(0.0, {"eth0": LinkCounters(2, 0, 0), "eth1": LinkCounters(3, 0, 0)}, 1.0))
    r = meter.add(
        Sample(1.0, {"eth0": LinkCounters(2, 100 * MB, 0), "eth1": LinkCounters(3, 50 * MB, 0)}, 1)
    )
    assert r.rx_bps == 150 * MBIT
    r = meter.add(Sample(2.0, {"eth0": LinkCounters(2, 200 * MB, 0), "eth1": None}, 1.0))
    assert r.rx_bps == 100 * MBIT
    assert r.problems == (PROBLEM_INTERFACE_MISSING,)


@pytest.mark.parametrize(
    ("rx", "tx", "capacity", "res", "expected"),
    [
        (0, 0, GBIT, 1, (0, 0, 0)),
        (4_999_999, 0, GBIT, 1, (0, 0, 0)),
        (5_000_000, 0, GBIT, 1, (10 * MBIT, 0, 1)),
        (14_999_999, 15_000_000, GBIT, 1, (10 * MBIT, 20 * MBIT, 2)),
        (333 * MBIT, 0, GBIT, 5, (350 * MBIT, 0, 35)),
        (3 * MBIT, 0, 10 * MBIT, 0.1, (3 * MBIT, 0, 30.0)),
        (301_000, 0, 10 * MBIT, 0.1, (300_000, 0, 3.0)),
        (310_000, 0, 10 * MBIT, 0.1, (310_000, 0, 3.1)),
    ],
)
def test_coarsen(
    rx: float, tx: float, capacity: int, res: float, expected: tuple[int, int, float]
) -> None:
    assert coarsen(rx, tx, capacity, res) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.1, 30),  # seconds since the previous sample
            st.integers(1, 4),  # ifindex (changes now and then)
            st.integers(0, 10**10),  # rx counter (may go backwards: a reset)
            st.integers(0, 10**10),
            st.booleans(),  # present
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0.1, 0.5, 1.0, 2.5, 5.0]),
)
def test_never_negative_always_on_the_grid(
    steps: list[tuple[float, int, int, int, bool]], res: float
) -> None:
    """Whatever the counters do, rates are non-negative, steps of the resolution, consistent."""
    config = cfg(capacity=10 * GBIT, window=30, resolution=res)
    step = config.capacity_bps * res / 100  # type: ignore[operator]
    meter = Meter(config)
    t = 0.0
    last: dict[int, tuple[int, int]] = {}
    bound = 0.0
    for dt, index, rx, tx, present in steps:
        t += dt
        link = LinkCounters(index, rx, tx) if present else None
        r = meter.add(Sample(t, {"eth0": link}, 50.0))
        if present and index in last:
            prev_rx, prev_tx = last[index]
            bound = max(bound, max(rx - prev_rx, tx - prev_tx, 0) * 8 / dt)
        last = {index: (rx, tx)} if present else {}
        if r.rx_bps is None:
            continue
        assert r.rx_bps >= 0 and r.tx_bps is not None and r.tx_bps >= 0
        assert abs(r.rx_bps / step - round(r.rx_bps / step)) < 1e-6
        assert r.link_percent is not None
        assert r.link_percent == pytest.approx(max(r.rx_bps, r.tx_bps) * 100 / 10 / GBIT)
        assert r.percent == max(r.link_percent, r.cpu_percent or 0)
        # No spike: the published rate never exceeds the fastest interval actually measured.
        assert max(r.rx_bps, r.tx_bps) <= bound + step


def test_cpu_busy_percent() -> None:
    from collections import namedtuple

    from nodeagent.load.cpu import CpuMeter, busy_percent

    T = namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")
    a = T(100, 0, 50, 800, 50, 0, 0, 0, 0, 0)
    b = T(130, 0, 60, 850, 50, 0, 0, 10, 5, 0)  # 50 busy (steal counts) of 100; guest is in user
    assert busy_percent(a, b) == pytest.approx(50.0)
    assert busy_percent(a, a) is None
    assert busy_percent(b, a) is None
    readings = iter([a, b])
    assert CpuMeter(lambda: next(readings)).percent() == pytest.approx(50.0)
