"""KernelBackend against wireguard-tools on the real kernel module, 20,000 peers.

Run inside the test VM (the host has no WireGuard module):

    python -m tests.kernel.vm -- python -m bench.kernel_bench [--peers N] [--sweep]

Measures, in one run, each on fresh interfaces:
  (a) ``wg setconf`` of all peers vs our full apply (plan from empty + apply);
  (b) a 200-peer change (100 removed, 50 added, 50 changed) with ``wg syncconf``
      vs what the daemon does on a feed change: plan against the state it
      holds from its previous pass, and apply (``sync_interface(known=...)``),
      once with the change arriving as a full snapshot (every peer freshly
      parsed: the worst case for planning) and once as a delta (the feed
      carries unchanged peers over as the same objects);
  (b') the same change with a read-back first (the daemon's periodic drift
      repair, every ``wireguard.resync_interval``);
  (c) ``wg show IFACE dump`` vs our ``read()``.
``--sweep`` also times the full apply for several message and batch sizes.
Everything in the VM runs ~10x slower than on hardware: compare the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

from pyroute2 import IPRoute

from nodeagent.core.model import DesiredInterface, Peer, format_key
from nodeagent.core.reconcile import plan
from nodeagent.core.sync import SyncOutcome, sync_interface
from nodeagent.feed.snapshot import parse_snapshot
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.backend import KernelBackend
from tests.kernel.vm import in_throwaway_vm
from tests.peerdata import feed_document, key, make_peers, v4

_names = itertools.count()


@contextmanager
def fresh_link() -> Iterator[str]:
    name = f"wgb{os.getpid() % 1000}x{next(_names)}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="wireguard")
    try:
        yield name
    finally:
        # Deleting 20,000 peers costs a grace period each (minutes under TCG):
        # inside the throw-away VM the link is left to its power-off.
        if not in_throwaway_vm():
            with IPRoute() as ipr:
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)


def wg_config(peers: Mapping[bytes, Peer]) -> str:
    """The ``wg setconf`` text for ``peers`` (no interface fields: neither side sets them)."""
    lines = ["[Interface]"]
    for p in peers.values():
        lines += ["", "[Peer]", f"PublicKey = {format_key(p.public_key)}"]
        if p.preshared_key:
            lines.append(f"PresharedKey = {format_key(p.preshared_key)}")
        if p.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(ip) for ip in sorted(p.allowed_ips)))
    return "\n".join(lines) + "\n"


def timed(fn: Callable[[], object], what: str = "") -> float:
    t = time.perf_counter()
    fn()
    took = time.perf_counter() - t
    if what:  # progress, so that a slow VM shows where it is
        print(f"  {what}: {took:.3f} s", file=sys.stderr, flush=True)
    return took


def wg(*args: str) -> str:
    return subprocess.run(["wg", *args], check=True, capture_output=True, text=True).stdout


def changed(desired: dict[bytes, Peer]) -> dict[bytes, Peer]:
    """100 removed, 50 added, 50 with new allowed IPs: a 200-peer change, as a delta leaves it."""
    keys = sorted(desired)
    out = dict(desired)
    for k in keys[:100]:
        del out[k]
    for i, k in enumerate(keys[100:150]):
        out[k] = Peer(k, frozenset({v4(i, 14)}), desired[k].preshared_key)
    for i in range(50):
        pk = key("bench-new", i)
        out[pk] = Peer(pk, frozenset({v4(i, 15)}))
    return out


def reparsed(peers: dict[bytes, Peer]) -> dict[bytes, Peer]:
    """The same peers as fresh objects, as parsing a full snapshot leaves them."""
    return dict(parse_snapshot(feed_document(peers, "wg0")).wireguard["wg0"].peers)


def full_apply(name: str, desired: Mapping[bytes, Peer], **kw: int) -> float:
    with KernelBackend(name, **kw) as b:
        return timed(lambda: b.apply(plan(desired, {})), f"full apply {kw}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=int, default=20_000)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()

    desired = make_peers(args.peers)
    desired2 = changed(desired)
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, fresh_link() as ref, fresh_link() as ours:
        conf1, conf2 = os.path.join(tmp, "full.conf"), os.path.join(tmp, "change.conf")
        with open(conf1, "w") as f:
            f.write(wg_config(desired))
        with open(conf2, "w") as f:
            f.write(wg_config(desired2))

        t_wg = timed(lambda: wg("setconf", ref, conf1), "wg setconf")
        t_us = full_apply(ours, desired)
        rows.append((f"(a) full apply, {len(desired)} peers vs setconf", t_us, t_wg))

        with KernelBackend(ours) as b:
            t_wg = timed(lambda: wg("syncconf", ref, conf2), "wg syncconf")
            now = datetime.now(UTC)
            out: list[SyncOutcome] = []
            for how, want in (("full snapshot", reparsed(desired2)), ("delta", desired2)):
                t_us = timed(
                    lambda want=want: out.append(
                        sync_interface(b, DesiredInterface(want), now, known=desired)
                    ),
                    f"plan+apply against the known state, from a {how}",
                )
                n = out[-1].added + out[-1].updated + out[-1].removed
                rows.append((f"(b) change of {n} from a {how} vs syncconf", t_us, t_wg))
                # Back to the first state.
                b.apply(plan(desired, b.read().peers))
            # The same change with a read-back first.
            t_wg = timed(lambda: wg("setconf", ref, conf1), "wg setconf (reset)")
            t_wg = timed(lambda: wg("syncconf", ref, conf2), "wg syncconf")
            t_us = timed(
                lambda: sync_interface(b, DesiredInterface(desired2), now), "read+plan+apply"
            )
            rows.append((f"(b') change of {n}, read back first", t_us, t_wg))

            t_wg = timed(lambda: wg("show", ref, "dump"), "wg show dump")
            got: dict[bytes, Peer] = {}
            t_us = timed(lambda: got.update(b.read().peers), "read")
            rows.append((f"(c) read {len(got)} peers vs wg show dump", t_us, t_wg))
            assert got == desired2, "read-back differs"
            assert plan(desired2, got).empty

    print(f"\n{'measure':<50} {'ours s':>9} {'wg s':>9} {'ours/wg':>8}")
    for label, us, ref_t in rows:
        print(f"{label:<50} {us:>9.3f} {ref_t:>9.3f} {us / ref_t:>8.3f}")

    if args.sweep:
        print(f"\n{'full apply: max_message, batch_bytes':<46} {'ours s':>9}")
        for size, batch in (
            (8192, 8192),
            (16384, 16384),
            (nlwire.DEFAULT_MESSAGE, nlwire.DEFAULT_MESSAGE),
            (nlwire.DEFAULT_MESSAGE, 256 * 1024),
            (nlwire.MAX_MESSAGE, nlwire.MAX_MESSAGE),
            (nlwire.MAX_MESSAGE, 1024 * 1024),
        ):
            with fresh_link() as name:
                t = full_apply(name, desired, max_message=size, batch_bytes=batch)
            print(f"{f'{size}, {batch}':<46} {t:>9.3f}")


if __name__ == "__main__":
    main()
