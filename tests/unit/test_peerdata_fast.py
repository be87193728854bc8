"""tests.peerdata.make_peers_fast: the very peers make_peers builds, only faster."""

from __future__ import annotations

import pytest

from tests.peerdata import as_table, make_peers, make_peers_fast, make_table_fast


@pytest.mark.parametrize(
    "kw",
    [{}, {"tag": "other", "v4_base": 172, "v6_base": "fd77:1:2"}, {"v6_base": "2001:db8:0:0:0"}],
)
def test_same_peers_in_the_same_order(kw: dict[str, object]) -> None:
    # 66,000 crosses a 65,536 boundary: the third IPv4 byte and the IPv6 high group.
    slow, fast = make_peers(66_000, **kw), make_peers_fast(66_000, **kw)  # type: ignore[arg-type]
    assert list(fast) == list(slow)
    assert all(fast[k] == p for k, p in slow.items())
    table = make_table_fast(66_000, **kw)  # type: ignore[arg-type]
    assert list(table) == list(slow) and table == slow == as_table(slow)


def test_refuses_a_base_make_peers_refuses() -> None:
    with pytest.raises(ValueError):
        make_peers_fast(1, v6_base="1:2:3:4:5:6:7")
