"""The kernel backend's encode-ahead helper: order kept, errors re-raised, early exit stops it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from nodeagent.wireguard.netlink.backend import _Prefetch


def test_items_arrive_in_order() -> None:
    items = [bytes([i % 256]) * 3 for i in range(1000)]
    with _Prefetch(iter(items), depth=4) as p:
        assert list(p) == items


def test_source_error_is_raised_in_reader() -> None:
    def source() -> Iterator[bytes]:
        yield b"a"
        raise ValueError("bad peer")

    with _Prefetch(source()) as p, pytest.raises(ValueError, match="bad peer"):
        list(p)


def test_leaving_early_stops_the_worker() -> None:
    produced = 0

    def endless() -> Iterator[bytes]:
        nonlocal produced
        while True:
            produced += 1
            yield b"x"

    before = threading.active_count()
    with _Prefetch(endless(), depth=2) as p:
        assert next(iter(p)) == b"x"
    assert threading.active_count() == before
    assert produced < 10
