"""KernelBackend against wireguard-tools on the real kernel module, 20,000 peers.

Run inside the test VM (the host has no WireGuard module):

    python -m tests.kernel.vm -- python -m bench.kernel_bench [--peers N] [--sweep]
    python -m tests.kernel.vm --memory 8G -- python -m bench.kernel_bench --million 1000000 \
        --only-million

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
  (c) ``wg show IFACE dump`` vs our ``read()`` and ``config_digest()``, each the best of three.
``--sweep`` also times the full apply for several message and batch sizes.
``--million N`` also measures (d), the scale goal: the full apply of N peers
(1,000,000; the kernel takes 2^20 an interface) vs ``wg setconf`` of the same
peers, each on a fresh interface, and our resident memory (VmRSS) holding the
desired state, after the apply, and its peak (VmHWM, reset before generating
the peers). ``--only-million`` skips the other rows. Both interfaces stay up
(deleting a million peers takes far longer than adding them), so the VM needs
room for two million kernel peers: see the free memory it prints. ``--json
PATH`` writes the figures for bench.scale_table.
Everything in the VM runs ~10x slower than on hardware: compare the ratios.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

from pyroute2 import IPRoute

from nodeagent.core.model import (
    DesiredInterface,
    Device,
    Peer,
    PeerTable,
    format_key,
    peer_record,
)
from nodeagent.core.reconcile import plan
from nodeagent.core.sync import SyncOutcome, sync_interface
from nodeagent.feed.snapshot import parse_snapshot
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.backend import MAX_PEERS, KernelBackend
from tests.kernel.vm import in_throwaway_vm
from tests.peerdata import as_table, feed_document, key, make_peers, make_table_fast, v4

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
    return "".join(_wg_config_lines(peers))


def _wg_config_lines(peers: Mapping[bytes, Peer]) -> Iterator[str]:
    yield "[Interface]\n"
    for p in peers.values():
        text = f"\n[Peer]\nPublicKey = {format_key(p.public_key)}\n"
        if p.preshared_key:
            text += f"PresharedKey = {format_key(p.preshared_key)}\n"
        if p.allowed_ips.packed:  # in their packed order: wg does not mind, and no sort
            text += "AllowedIPs = " + ", ".join(map(str, p.allowed_ips)) + "\n"
        yield text


def write_wg_config(path: str, peers: Mapping[bytes, Peer]) -> None:
    """:func:`wg_config` into ``path``, a chunk at a time (a million peers: 130 MB of text)."""
    lines = _wg_config_lines(peers)
    with open(path, "w") as f:
        while chunk := "".join(itertools.islice(lines, 10_000)):
            f.write(chunk)


def status_mb(field: str) -> float:
    """A ``VmRSS``/``VmHWM``-like field of /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def meminfo_mb(field: str = "MemAvailable") -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> None:
    """VmHWM := VmRSS (Linux 4.0+), so that the peak is the million row's own."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        print(f"  cannot reset VmHWM ({e}): the peak includes the rows before", file=sys.stderr)


def timed(fn: Callable[[], object], what: str = "", repeat: int = 1) -> float:
    """Seconds ``fn()`` took: the best of ``repeat`` calls (a single call in the VM varies 2x)."""
    took = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        took = min(took, time.perf_counter() - t)
    if what:  # progress, so that a slow VM shows where it is
        print(f"  {what}: {took:.3f} s", file=sys.stderr, flush=True)
    return took


def wg(*args: str) -> str:
    return subprocess.run(["wg", *args], check=True, capture_output=True, text=True).stdout


def changed(desired: PeerTable) -> PeerTable:
    """100 removed, 50 added, 50 with new allowed IPs: a 200-peer change, as a delta leaves it
    (the records of the peers it does not touch are the very ones of ``desired``)."""
    keys = sorted(desired)
    out = dict(desired.records)
    for k in keys[:100]:
        del out[k]
    for i, k in enumerate(keys[100:150]):
        out[k] = peer_record(Peer(k, {v4(i, 14)}).routes, desired[k].preshared_key)
    for i in range(50):
        pk = key("bench-new", i)
        out[pk] = peer_record(Peer(pk, {v4(i, 15)}).routes, None)
    return PeerTable.of_records(out)


def reparsed(peers: Mapping[bytes, Peer]) -> Mapping[bytes, Peer]:
    """The same peers parsed afresh, as a full snapshot leaves them (no record shared)."""
    return parse_snapshot(feed_document(dict(peers), "wg0")).wireguard["wg0"].peers


def full_apply(name: str, desired: Mapping[bytes, Peer], **kw: int) -> float:
    with KernelBackend(name, **kw) as b:
        return timed(lambda: b.apply(plan(desired, {})), f"full apply {kw}")


def million(n: int) -> dict[str, float]:
    """(d): full apply of ``n`` peers vs ``wg setconf``, fresh interfaces; our memory."""
    reset_peak()
    t_gen = time.perf_counter()
    desired = make_table_fast(n)  # as the daemon holds them
    t_gen = time.perf_counter() - t_gen
    desired_mb = status_mb("VmRSS")
    free0 = meminfo_mb()
    print(
        f"  generated {n} peers in {t_gen:.1f} s; VmRSS {desired_mb:.0f} MB; "
        f"guest MemAvailable {free0:.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    # /var/tmp: the VM's own tmpfs (on the host, the place for big scratch files).
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp, fresh_link() as ref:
        conf = os.path.join(tmp, "million.conf")
        timed(lambda: write_wg_config(conf, desired), "wrote the wg config")
        t_wg = timed(lambda: wg("setconf", ref, conf), f"wg setconf, {n} peers")
    free1 = meminfo_mb()
    print(f"  guest MemAvailable {free1:.0f} MB after wg setconf", file=sys.stderr, flush=True)
    with fresh_link() as ours:
        t_us = full_apply(ours, desired)
    rss, peak = status_mb("VmRSS"), status_mb("VmHWM")
    print(
        f"  guest MemAvailable {meminfo_mb():.0f} MB after our apply "
        f"(a kernel peer with its routes: ~{(free0 - free1) * 1024 / n:.2f} kB)",
        file=sys.stderr,
        flush=True,
    )
    return {
        "million_peers": n,
        "million_apply_s": t_us,
        "million_setconf_s": t_wg,
        "million_ratio": t_us / t_wg,
        "million_desired_mb": desired_mb,
        "million_rss_mb": rss,
        "million_peak_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=int, default=20_000)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument(
        "--million", type=int, default=0, metavar="N", help="also (d): the full apply of N peers"
    )
    parser.add_argument("--only-million", action="store_true", help="(d) alone")
    parser.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
    args = parser.parse_args()
    if args.only_million and not args.million:
        parser.error("--only-million needs --million N")
    if args.million > MAX_PEERS:
        parser.error("more peers than the kernel takes on one interface")

    figures: dict[str, float] = {}
    if not args.only_million:
        figures.update(rows(args.peers, args.sweep))
    if args.million:
        figures.update(million(args.million))
        print(
            f"\n{args.million // 1000}k peers: full apply {figures['million_apply_s']:.1f} s, "
            f"wg setconf {figures['million_setconf_s']:.1f} s, "
            f"ratio {figures['million_ratio']:.2f}; "
            f"RSS {figures['million_rss_mb']:.0f} MB, peak {figures['million_peak_mb']:.0f} MB "
            f"(holding the desired state before the apply: {figures['million_desired_mb']:.0f} MB)"
        )
    # Also on stdout: inside the VM the host's file system is read-only, and
    # /var/tmp is the guest's own.
    print(f"figures: {json.dumps(figures)}")
    if args.json:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=1)
        except OSError as e:
            print(f"cannot write {args.json}: {e}", file=sys.stderr)


def rows(peers: int, sweep: bool) -> dict[str, float]:
    """Rows (a) to (c) at ``peers`` peers (and the sweep): printed, and their figures."""
    desired = as_table(make_peers(peers))  # as the daemon holds them
    desired2 = changed(desired)
    table: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, fresh_link() as ref, fresh_link() as ours:
        conf1, conf2 = os.path.join(tmp, "full.conf"), os.path.join(tmp, "change.conf")
        with open(conf1, "w") as f:
            f.write(wg_config(desired))
        with open(conf2, "w") as f:
            f.write(wg_config(desired2))

        t_wg = timed(lambda: wg("setconf", ref, conf1), "wg setconf")
        t_us = full_apply(ours, desired)
        table.append(("full", f"(a) full apply, {len(desired)} peers vs setconf", t_us, t_wg))

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
                table.append(
                    (how.split()[-1], f"(b) change of {n} from a {how} vs syncconf", t_us, t_wg)
                )
                # Back to the first state.
                b.apply(plan(desired, b.read().peers))
            # The same change with a read-back first.
            t_wg = timed(lambda: wg("setconf", ref, conf1), "wg setconf (reset)")
            t_wg = timed(lambda: wg("syncconf", ref, conf2), "wg syncconf")
            t_us = timed(
                lambda: sync_interface(b, DesiredInterface(desired2), now), "read+plan+apply"
            )
            table.append(("readback", f"(b') change of {n}, read back first", t_us, t_wg))

            # The reads change nothing: each is timed as the best of three.
            t_wg = timed(lambda: wg("show", ref, "dump"), "wg show dump (best of 3)", 3)
            reads: list[Device] = []  # the read alone is timed: no Peer is made of its table
            t_us = timed(lambda: reads.append(b.read()), "read (best of 3)", 3)
            got = reads[0].peers
            table.append(("read", f"(c) read {len(got)} peers vs wg show dump", t_us, t_wg))
            assert got == desired2, "read-back differs"
            assert plan(desired2, got).empty
            # What a due drift repair reads when nothing drifted: the configuration digest.
            t_us = timed(lambda: b.config_digest(), "config digest (best of 3)", 3)
            table.append(("digest", f"(c') drift check of {len(got)} peers (digest)", t_us, t_wg))

    print(f"\n{'measure':<50} {'ours s':>9} {'wg s':>9} {'ours/wg':>8}")
    figures: dict[str, float] = {"read_peers": len(got)}
    for name, label, us, ref_t in table:
        print(f"{label:<50} {us:>9.3f} {ref_t:>9.3f} {us / ref_t:>8.3f}")
        figures[f"{name}_ratio"] = us / ref_t

    if sweep:
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
    return figures


if __name__ == "__main__":
    main()
