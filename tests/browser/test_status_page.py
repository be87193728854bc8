"""The public status page in headless Chromium: 50 servers, sorting, the filter, staleness,
dark mode, no JavaScript, no third party, and an axe scan without a serious violation."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import COUNT, STALE_AFTER, Fleet

REPO = Path(__file__).resolve().parents[2]
# The README's picture is refreshed on request only, so a test run leaves the tree as it was.
SCREENSHOT_FOR_DOCS = REPO / "docs" / "status-page.png"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    yield p
    context.close()


def loads(page: Page) -> list[float]:
    values = page.eval_on_selector_all(
        "#servers tbody tr", "rows => rows.map(r => r.getAttribute('data-load'))"
    )
    return [float(v) for v in values if v]


def names(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "#servers tbody tr", "rows => rows.map(r => r.getAttribute('data-name'))"
    )


def test_fifty_servers_sorted_in_place(fleet: Fleet, page: Page) -> None:
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(fleet.url + "/")
    expect(page.locator("#servers tbody tr")).to_have_count(COUNT)
    assert loads(page) == sorted(loads(page))
    expect(page.locator("#summary")).to_contain_text(f"{COUNT} of {COUNT} servers online")

    page.click("thead a[data-sort=name]")
    assert names(page) == sorted(names(page))
    assert page.url.endswith("?sort=name&order=asc")
    expect(page.locator("thead th").first).to_have_attribute("aria-sort", "ascending")
    page.click("thead a[data-sort=name]")
    assert names(page) == sorted(names(page), reverse=True)
    page.click("thead a[data-sort=load]")
    page.click("thead a[data-sort=load]")
    assert loads(page) == sorted(loads(page), reverse=True)

    # Nothing but the collector itself was asked for anything, and the policy blocked nothing.
    assert requests and all(u.startswith(fleet.url + "/") for u in requests), requests
    assert not problems, problems


def test_bars_labels_and_fair_use_notes(fleet: Fleet, page: Page) -> None:
    page.goto(fleet.url + "/?sort=name")
    row = page.locator("#servers tbody tr", has=page.locator("th", has_text="de-fra-01"))
    expected = fleet.load["de-fra-01"]
    expect(row.get_by_role("img", name=f"Server load is at {expected} %")).to_be_visible()
    expect(row.locator(".meter span")).to_have_text(f"{expected} %")
    slow = [n for n, c in fleet.capacity.items() if c < 50_000_000]
    notes = page.locator("p.fair-use")
    # The slow servers, and any fast one with under 50 Mbit/s to spare.
    busy = [n for n, c in fleet.capacity.items() if c == 1_000_000_000 and fleet.load[n] > 95]
    expect(notes).to_have_count(len(slow) + len(busy))
    expect(notes.first).to_contain_text("not use this server for large downloads or P2P")


def test_country_filter(fleet: Fleet, page: Page) -> None:
    page.goto(fleet.url + "/")
    page.select_option("#country", "se")
    page.click("form.filter button")
    page.wait_for_url("**country=se**")
    rows = page.locator("#servers tbody tr")
    expect(rows).to_have_count(COUNT // 10)
    for text in rows.locator("td:nth-child(2)").all_inner_texts():
        assert text == "Stockholm, Sweden"
    expect(page.locator("#country")).to_have_value("se")


def test_without_javascript(fleet: Fleet, browser: Browser) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(fleet.url + "/")
        expect(page.locator("#servers tbody tr")).to_have_count(COUNT)
        page.click("thead a[data-sort=country]")  # a real navigation now
        page.wait_for_url("**sort=country**")
        countries = page.locator("#servers tbody td:nth-child(2)").all_inner_texts()
        assert [c.split(", ")[1] for c in countries] == sorted(
            (c.split(", ")[1] for c in countries), key=str.lower
        )
        page.select_option("#country", "jp")
        page.click("form.filter button")
        page.wait_for_url("**country=jp**")
        expect(page.locator("#servers tbody tr")).to_have_count(COUNT // 10)
        assert "sort=country" in page.url  # the form keeps the sort
    finally:
        context.close()


def luminance(css: str) -> float:
    parts = css[css.index("(") + 1 : css.index(")")].split(",")
    r, g, b = (float(x) / 255 for x in parts[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_light_and_dark(fleet: Fleet, page: Page, tmp_path: Path) -> None:
    page.emulate_media(color_scheme="light")
    page.goto(fleet.url + "/?sort=name")
    expect(page.locator("#servers tbody tr")).to_have_count(COUNT)
    assert luminance(page.evaluate("getComputedStyle(document.body).backgroundColor")) > 0.9
    shot = SCREENSHOT_FOR_DOCS if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "page.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    page.emulate_media(color_scheme="dark")
    assert luminance(page.evaluate("getComputedStyle(document.body).backgroundColor")) < 0.1
    assert luminance(page.evaluate("getComputedStyle(document.body).color")) > 0.7


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious(fleet: Fleet, page: Page, scheme: Any) -> None:
    from axe_playwright_python.sync_playwright import Axe

    page.emulate_media(color_scheme=scheme)
    page.goto(fleet.url + "/?sort=name")
    results = Axe().run(page)
    serious = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not serious, serious


def test_a_server_going_stale(fleet: Fleet, page: Page) -> None:
    name = "nl-ams-01"
    fleet.active.discard(name)
    try:
        page.goto(fleet.url + "/?sort=name")
        row = page.locator("#servers tbody tr", has=page.locator("th", has_text=name))
        # The server falls silent; within stale_after (and a tick) the page says so.
        deadline = time.monotonic() + STALE_AFTER + 60
        while row.get_attribute("class") != "offline":
            assert time.monotonic() < deadline, "the silent server never went offline"
            time.sleep(0.5)
            page.reload()
        expect(row.locator("td.status")).to_have_text("Offline")
        expect(row.locator("td.load")).to_have_text("Offline")
        expect(page.locator("#summary")).to_contain_text(f"{COUNT - 1} of {COUNT} servers online")
    finally:
        fleet.active.add(name)
    fleet.wait_all_online()


def test_the_script_refreshes_in_place(fleet: Fleet, page: Page) -> None:
    name = "se-sto-02"
    before = fleet.load[name]
    page.goto(fleet.url + "/?sort=name")
    row = page.locator("#servers tbody tr", has=page.locator("th", has_text=name))
    expect(row.locator(".meter span")).to_have_text(f"{before} %")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    fleet.load[name] = 99 if before != 99 else 98
    try:
        # No reload: the script's conditional refresh brings the new figure (a new snapshot
        # within publish_every, then the next refresh).
        expect(row.locator(".meter span")).to_have_text(f"{fleet.load[name]} %", timeout=90_000)
        assert navigations == []
    finally:
        fleet.load[name] = before
