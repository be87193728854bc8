"""The demo's summary: rows from the collector's answer, the redrawn block and the log line."""

from __future__ import annotations

from nodeagent.lab.summary import (
    EVENTS_SHOWN,
    Event,
    ServerFigures,
    Snapshot,
    bar,
    clock,
    figures_from_api,
    progress,
    render,
    render_line,
)

KINDS = {"nl-ams-01": "WireGuard", "de-fra-01": "WireGuard", "se-sto-01": "OpenVPN"}
API = {
    "servers": [
        {"name": "se-sto-01", "online": True, "load_percent": 40.0, "rx_bps": 4_300_000,
         "tx_bps": 50_000, "capacity_bps": 10_000_000},
        {"name": "nl-ams-01", "online": True, "load_percent": 65, "rx_bps": 6_500_000,
         "tx_bps": 0, "capacity_bps": 10_000_000},
        {"name": "de-fra-01", "online": False, "load_percent": None, "rx_bps": None},
        {"name": "not-ours", "online": True, "load_percent": 1},
    ]
}  # fmt: skip


def snap(elapsed: float = 12.0, duration: float | None = 20.0, events: int = 2) -> Snapshot:
    evs = tuple(Event(i * 3.0, f"event number {i}") for i in range(events))
    return Snapshot("http://127.0.0.1:8600/", elapsed, duration, figures_from_api(API, KINDS), evs)


def test_rows_follow_the_demo_order_and_ignore_other_servers() -> None:
    rows = figures_from_api(API, KINDS)
    assert [r.name for r in rows] == ["nl-ams-01", "de-fra-01", "se-sto-01"]
    assert rows[0] == ServerFigures("nl-ams-01", "WireGuard", True, 65.0, 6_500_000, 0, 10_000_000)
    assert rows[1].online is False and rows[1].load_percent is None
    assert rows[0].uplink_percent == 65.0


def test_an_unreadable_answer_gives_offline_rows() -> None:
    for doc in (None, [], {"servers": "x"}, {"servers": [{"name": 3}, "x"]}):
        rows = figures_from_api(doc, KINDS)
        assert [r.online for r in rows] == [False, False, False]
    odd = figures_from_api({"servers": [{"name": "nl-ams-01", "online": 1, "rx_bps": True}]}, KINDS)
    assert odd[0].online is False and odd[0].rx_bps is None


def test_the_block_shows_every_server_with_load_and_rates() -> None:
    lines = render(snap())
    text = "\n".join(lines)
    assert lines[0] == "nodeagent demo - public status page: http://127.0.0.1:8600/"
    assert "0:12 / 0:20" in lines[1]
    ams = next(line for line in lines if line.startswith("nl-ams-01"))
    assert ams.split() == ["nl-ams-01", "WireGuard", "yes", "65%", "[######----]", "65%", "6.5",
                           "0.0"]  # fmt: skip
    fra = next(line for line in lines if line.startswith("de-fra-01"))
    assert fra.split() == ["de-fra-01", "WireGuard", "no", "-", "-", "-", "-"]
    assert "se-sto-01    OpenVPN    yes      40%" in text
    assert "event number 1" in text


def test_the_block_keeps_its_height_and_width() -> None:
    heights = {len(render(snap(events=n))) for n in range(EVENTS_SHOWN + 3)}
    assert len(heights) == 1
    assert all(len(line) <= 40 for line in render(snap(), width=40))
    last = render(snap(events=EVENTS_SHOWN + 2))
    assert not any("event number 0" in line for line in last)
    assert any(f"event number {EVENTS_SHOWN + 1}" in line for line in last)


def test_progress_with_and_without_a_duration() -> None:
    assert progress(5, 20, width=8) == "[##------] 0:05 / 0:20  (Ctrl+C stops it early)"
    assert progress(30, 20, width=4).startswith("[####] 0:30 / 0:20")
    assert progress(75, None).startswith("running 1:15")
    assert clock(3725) == "1:02:05" and clock(-1) == "0:00"
    assert bar(0.0, 3) == "[---]" and bar(2.0, 3) == "[###]"


def test_the_log_line() -> None:
    assert render_line(snap()) == (
        "[0:12/0:20] nl-ams-01 load 65% uplink 65% in 6.5 out 0.0 Mbit/s | de-fra-01 offline"
        " | se-sto-01 load 40% uplink 43% in 4.3 out 0.1 Mbit/s"
    )
    assert render_line(snap(duration=None)).startswith("[0:12] ")
