"""Fuzz target: feed snapshots (``parse_snapshot``, ``read_file_feed``).

Every input ends in ``FeedError`` or in a ``DesiredState`` that satisfies every
rule of a snapshot and survives re-encoding; no error message quotes a key or
an address of the input.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.feed.snapshot import FeedError, parse_snapshot, read_file_feed
from tests.fuzz.feeddocs import DEEP, check_state, encoded, json_values, snapshot_doc
from tests.fuzz.harness import ended_well, target


def parse(data: bytes) -> None:
    result = ended_well(lambda: parse_snapshot(data), FeedError, source=data)
    if not isinstance(result, FeedError):
        check_state(result)


@target(300)
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    parse(data)


@target(300)
@given(encoded(json_values))
def test_any_json(data: bytes) -> None:
    parse(data)


@target(400)
@given(encoded(snapshot_doc))
def test_snapshot_shaped(data: bytes) -> None:
    parse(data)


@target(200)
@given(encoded(snapshot_doc), encoded(snapshot_doc))
def test_a_snapshot_read_over_another_is_read_alone(before: bytes, data: bytes) -> None:
    """Sharing the current state's unchanged peers changes nothing in the outcome."""
    alone = ended_well(lambda: parse_snapshot(data), FeedError, source=data)
    try:
        current = parse_snapshot(before)
    except FeedError:
        return
    over = ended_well(lambda: parse_snapshot(data, current), FeedError, source=data)
    if isinstance(alone, FeedError):
        assert isinstance(over, FeedError) and str(over) == str(alone)
        return
    assert over == alone  # peers, expiries and users
    for name, wg in over.wireguard.items():
        assert list(wg.peers) == list(alone.wireguard[name].peers)


@pytest.mark.parametrize("data", DEEP, ids=range(len(DEEP)))
def test_deep_nesting(data: bytes) -> None:
    result = ended_well(lambda: parse_snapshot(data), FeedError, source=data)
    assert isinstance(result, FeedError)


_dir = tempfile.TemporaryDirectory(prefix="fuzz-feed-")


@target(100)
@given(st.one_of(encoded(snapshot_doc), st.binary(max_size=256)))
def test_file_feed(data: bytes) -> None:
    path = Path(_dir.name) / "feed.json"
    path.write_bytes(data)
    result = ended_well(lambda: read_file_feed(path), FeedError, source=data)
    if not isinstance(result, FeedError):
        state, stamp = result
        check_state(state)
        assert stamp is not None and stamp.size == len(data)
    os.unlink(path)
