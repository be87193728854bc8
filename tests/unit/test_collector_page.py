"""The public page from a fixed fleet state: rows, sorting, filter, notes, accessibility."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from nodeagent.central.collector.config import NodeConfig
from nodeagent.central.collector.document import Reading
from nodeagent.central.collector.fleet import HISTORY_SPAN, HISTORY_STEP, Server, Snapshot
from nodeagent.central.collector.page import Query, render_page, rows, sparkline

NOW = 1_800_000_000.0
ASSETS = {
    "style.css": "/static/style.css?v=1",
    "app.js": "/static/app.js?v=1",
    "favicon.svg": "/static/favicon.svg?v=1",
}
COUNTRIES = frozenset({"nl", "de", "se"})


def server(
    name: str,
    code: str,
    country: str,
    percent: float | None,
    *,
    online: bool = True,
    capacity: int = 1_000_000_000,
    city: str = "City",
) -> Server:
    config = NodeConfig(name, f"{name}.example.net", city, country, code, None, "CIT", "", "")
    reading = None
    if percent is not None:
        rx = int(capacity * percent / 100)
        reading = Reading(NOW - 30, percent, rx, rx // 2, capacity)
    start = int(NOW) - HISTORY_SPAN
    history = tuple((start + i * HISTORY_STEP, float(i % 100)) for i in range(1, 96, 3))
    return Server(config, online, reading, history if percent is not None else ())


SNAPSHOT = Snapshot(
    7,
    NOW,
    (
        server("nl-ams-01", "nl", "Netherlands", 37, city="Amsterdam"),
        server("de-fra-01", "de", "Germany", 96, city="Frankfurt"),
        server("se-sto-01", "se", "Sweden", 10, capacity=40_000_000, city="Stockholm"),
        server("nl-ams-02", "nl", "Netherlands", 55, online=False, city="Amsterdam"),
        server("de-ber-01", "de", "Germany", 3, city="Berlin"),
    ),
)


def names(query: Query) -> list[str]:
    return [r.server.config.name for r in rows(SNAPSHOT, query)]


def test_sorting_and_filtering() -> None:
    assert names(Query()) == ["de-ber-01", "se-sto-01", "nl-ams-01", "de-fra-01", "nl-ams-02"]
    assert names(Query("load", "desc")) == [
        "de-fra-01", "nl-ams-01", "se-sto-01", "de-ber-01", "nl-ams-02",
    ]  # fmt: skip
    assert names(Query("name")) == sorted(names(Query()))
    assert names(Query("country")) == [
        "de-ber-01", "de-fra-01", "nl-ams-01", "nl-ams-02", "se-sto-01",
    ]  # fmt: skip
    assert names(Query("load", "asc", "nl")) == ["nl-ams-01", "nl-ams-02"]


def test_query_is_normalized() -> None:
    assert Query.parse({"sort": "evil", "order": "x", "country": "zz"}, COUNTRIES) == Query()
    assert Query.parse({"sort": "name", "order": "desc", "country": "NL"}, COUNTRIES) == Query(
        "name", "desc", "nl"
    )
    assert Query("name", "desc", "nl").href(order="asc") == "?sort=name&order=asc&country=nl"


class Page(HTMLParser):
    """Every element with its attributes, and the text, for checks on the markup."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def test_rows_bars_labels_and_notes() -> None:
    html = render_page(SNAPSHOT, Query(), ASSETS)
    page = parse(html)
    labels = [a["aria-label"] for t, a in page.elements if a.get("role") == "img"]
    assert "Server load is at 37 %" in labels and "Server load is at 96 %" in labels
    assert sum(label.startswith("Server load is at") for label in labels) == 4
    # The offline server still shows its last 24 hours.
    assert sum(label.startswith("Load over the last 24 hours") for label in labels) == 5
    fills = [a for t, a in page.elements if t == "rect" and "fill" in (a.get("class") or "")]
    assert [(a["width"], a["class"]) for a in fills] == [
        ("3", "fill low"), ("10", "fill low"), ("37", "fill low"), ("96", "fill high"),
    ]  # fmt: skip
    text = " ".join(page.text)
    assert "37 %" in text and "96 %" in text
    assert "4 of 5 servers online" in text
    # The fair-use note: the 40 Mbit/s server, and the 1 Gbit/s one with 40 Mbit/s to spare.
    notes = re.findall(
        r'<tr data-name="([^"]+)"[^>]*>\n<th scope="row">[^<]*<p class="fair-use">', html
    )
    assert sorted(notes) == ["de-fra-01", "se-sto-01"]
    assert "not use this server for large downloads or P2P" in html
    assert '<tr data-name="nl-ams-02" ' in html and 'class="offline"' in html


def test_sort_links_work_without_javascript() -> None:
    page = parse(render_page(SNAPSHOT, Query("name", "asc", "nl"), ASSETS))
    links = {a["data-sort"]: a["href"] for t, a in page.elements if t == "a" and "data-sort" in a}
    assert links == {
        "name": "?sort=name&order=desc&country=nl",
        "country": "?sort=country&order=asc&country=nl",
        "load": "?sort=load&order=asc&country=nl",
    }
    sorts = [a["aria-sort"] for t, a in page.elements if t == "th" and "aria-sort" in a]
    assert sorts == ["ascending", "none", "none"]
    form = next(a for t, a in page.elements if t == "form")
    assert (form["method"], form["action"]) == ("get", "/")
    selected = [a["value"] for t, a in page.elements if t == "option" and "selected" in a]
    assert selected == ["nl"]


def test_nothing_from_elsewhere_and_nothing_inline() -> None:
    html = render_page(SNAPSHOT, Query(), ASSETS)
    page = parse(html)
    for tag, attrs in page.elements:
        assert "style" not in attrs, tag  # style-src 'self' refuses inline styles
        assert not any(k.startswith("on") for k in attrs), tag
        for key in ("src", "href", "action"):
            value = attrs.get(key) or ""
            assert not value.startswith(("http:", "https:", "//")), value
    scripts = [a for t, a in page.elements if t == "script"]
    assert scripts == [{"src": "/static/app.js?v=1", "defer": None}]
    assert "<style" not in html


def test_names_are_escaped() -> None:
    evil = server("x", "nl", "<script>alert(1)</script>", 5, city="A&B")
    html = render_page(Snapshot(1, NOW, (evil,)), Query(), ASSETS)
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "A&amp;B" in html


def test_sparkline_keeps_gaps() -> None:
    start = int(NOW) - HISTORY_SPAN
    step = HISTORY_STEP
    history = ((start, 10.0), (start + step, 20.4), (start + 4 * step, 100.0), (start - step, 1.0))
    # The window is the 96 steps up to and including the current one: ``start`` is out.
    assert sparkline(history, NOW) == "M0 80M3 0"
    assert sparkline(((start + step, 50.0),), NOW) == "M0 50h1"
    assert sparkline(((start + step, 50.0),), NOW + step - 1) == "M0 50h1"
    assert sparkline(((start + step, 50.0),), NOW + step) == ""
    assert sparkline((), NOW) == ""


def test_rows_are_reused_while_nothing_changed() -> None:
    from dataclasses import replace

    from nodeagent.central.collector.page import RowCache, prepare

    cache: RowCache = {}
    first = prepare(SNAPSHOT, cache)
    assert prepare(SNAPSHOT, cache) == first
    changed = replace(SNAPSHOT.servers[0], online=False)
    later = replace(SNAPSHOT, version=8, servers=(changed, *SNAPSHOT.servers[1:]))
    again = prepare(later, cache)
    assert again[0] is not first[0] and again[0].server.online is False
    assert all(a is b for a, b in zip(again[1:], first[1:], strict=True))
    # A step later every sparkline moves: nothing is reused.
    moved = prepare(replace(later, at=NOW + HISTORY_STEP), cache)
    assert not any(a is b for a, b in zip(moved, again, strict=True))
    assert len(prepare(replace(later, servers=later.servers[:2]), cache)) == 2 and len(cache) == 2
