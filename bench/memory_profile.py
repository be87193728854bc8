"""Where the daemon's bytes go at N peers: each structure it keeps alive, and the peaks.

    python bench/memory_profile.py [--peers 100000] [--no-tracemalloc] [--top 12]

In-process, no root and no WireGuard: the feed snapshot is a file (one IPv4
/32 and one IPv6 /128 a peer, every third with a preshared key), the
read-backs decode a synthetic kernel dump (the codec) and a synthetic
wireguard-go ``get=1`` reply, as a real read would. Each stage runs what the
daemon runs and reports what it leaves held (tracemalloc's current size and
VmRSS after a collection) and its transient peak (tracemalloc's peak above
the start, VmHWM); the held structures are also walked object by object, by
type, in bytes per peer (``sys.getsizeof`` rounded to pymalloc's 16 bytes;
objects already counted in an earlier structure are reported as shared).

tracemalloc's own bookkeeping inflates RSS: ``--no-tracemalloc`` gives the RSS
figures as the daemon would see them.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_RSS0 = 0


def proc_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (clear_refs 5); a no-op where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


_RSS0 = proc_kb("VmRSS")

# Everything the daemon imports, measured as one block.
from nodeagent.cli import main as _cli_main  # noqa: E402, F401
from nodeagent.core.model import (  # noqa: E402
    DesiredState,
    Device,
    Peer,
    PeerTable,
    format_key,
)
from nodeagent.core.reconcile import plan  # noqa: E402
from nodeagent.core.sync import sync_interface  # noqa: E402
from nodeagent.daemon import agent as _agent  # noqa: E402, F401
from nodeagent.daemon.memory import release_free_memory  # noqa: E402
from nodeagent.feed.snapshot import read_file_feed  # noqa: E402
from nodeagent.wireguard.netlink import codec as nlwire  # noqa: E402
from nodeagent.wireguard.netlink.idle import ScrubDecoder  # noqa: E402
from nodeagent.wireguard.uapi import text as uapi_text  # noqa: E402
from nodeagent.wireguard.uapi.idle import idle_from_reply  # noqa: E402
from nodeagent.wireguard.uapi.segments import peer_segments  # noqa: E402
from tests.peerdata import key, v4, v6  # noqa: E402
from tests.wgencode import encode_device_dump, format_get_reply  # noqa: E402

_RSS_IMPORTS = proc_kb("VmRSS")
NOW = datetime(2026, 12, 1, tzinfo=UTC)
IFACE = "wg0"
FAMILY = 0x20  # any generic netlink family id: the codec only compares it


def snapshot_doc(n: int, version: str) -> bytes:
    """The feed document: every peer an IPv4 /32 and an IPv6 /128, every third a psk."""
    items: list[dict[str, object]] = []
    for i in range(n):
        item: dict[str, object] = {
            "public_key": format_key(key("peer", i)),
            "allowed_ips": [str(v4(i)), str(v6(i))],
        }
        if i % 3 == 0:
            item["preshared_key"] = format_key(key("psk", i))
        items.append(item)
    doc = {"version": version, "full": True, "wireguard": {IFACE: {"peers": items}}}
    return json.dumps(doc).encode()


def r16(n: int) -> int:
    return (n + 15) & ~15


def breakdown(peers: Mapping[bytes, Peer], seen: set[int]) -> dict[str, tuple[int, int]]:
    """Bytes by kind of object reachable from ``peers``: (new, shared with ``seen``).

    ``seen`` grows by what is counted here, so a later structure reports what
    it shares with the earlier ones.
    """
    out: dict[str, list[int]] = {}

    def add(kind: str, obj: object) -> None:
        new_shared = out.setdefault(kind, [0, 0])
        size = r16(sys.getsizeof(obj))
        if id(obj) in seen:
            new_shared[1] += size
        else:
            seen.add(id(obj))
            new_shared[0] += size

    if isinstance(peers, PeerTable):
        add("PeerTable's dict (key -> record)", peers.records)
        for k, record in peers.records.items():
            add("public key bytes", k)
            add("record bytes (psk, routes)", record)
        return {kind: (v[0], v[1]) for kind, v in out.items()}
    add("dict (key -> Peer)", peers)
    for k, p in peers.items():
        add("public key bytes", k)
        add("Peer", p)
        if p.public_key is not k:
            add("public key bytes", p.public_key)
        add("routes bytes", p.routes)  # every route, packed in one bytes object
        if p.preshared_key is not None:
            add("preshared key bytes", p.preshared_key)
    return {kind: (v[0], v[1]) for kind, v in out.items()}


class Report:
    trim = False

    def __init__(self, n: int, traced: bool) -> None:
        self.n = n
        self.traced = traced
        self.rows: list[tuple[str, float, float, float, float]] = []

    def stage(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn``; record what it leaves held and its transient peak, per peer and in MB."""
        gc.collect()
        reset_hwm()
        cur0 = tracemalloc.get_traced_memory()[0] if self.traced else 0
        if self.traced:
            tracemalloc.reset_peak()
        t0 = time.perf_counter()
        result = fn(*args)
        dt = time.perf_counter() - t0
        gc.collect()
        if self.trim:
            release_free_memory()
        cur1, peak = tracemalloc.get_traced_memory() if self.traced else (0, 0)
        rss1, hwm = proc_kb("VmRSS"), proc_kb("VmHWM")
        held = (cur1 - cur0) / self.n
        transient = (peak - cur0) / self.n
        self.rows.append((label, held, transient, rss1 / 1024, hwm / 1024))
        print(
            f"  {label:<58} held {held:7.0f} B/peer  peak +{transient:7.0f} B/peer  "
            f"RSS {rss1 / 1024:6.1f} MB  HWM {hwm / 1024:6.1f} MB  ({dt:.2f} s)",
            flush=True,
        )
        return result


def print_breakdown(title: str, peers: Mapping[bytes, Peer], seen: set[int], n: int) -> None:
    parts = breakdown(peers, seen)
    total_new = sum(v[0] for v in parts.values())
    total_shared = sum(v[1] for v in parts.values())
    print(f"\n  {title}: {total_new / n:.0f} B/peer new, {total_shared / n:.0f} B/peer shared")
    for kind, (new, shared) in sorted(parts.items(), key=lambda kv: -kv[1][0]):
        print(f"    {kind:<28} {new / n:7.1f} new  {shared / n:7.1f} shared")


def top_lines(snap_before: tracemalloc.Snapshot, top: int) -> None:
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    print("\n  allocation sites of everything held now (tracemalloc, by line):")
    for stat in snap.compare_to(snap_before, "lineno")[:top]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"    {stat.size_diff / 1024 / 1024:7.1f} MB  {stat.count_diff:>9,} objs  {where}")


class DumpBackend:
    """A kernel backend whose read() decodes a prebuilt GET_DEVICE dump, message by message."""

    max_peers = None
    interface = IFACE

    def __init__(self, dump: bytes) -> None:
        self.dump = dump
        self.applied = 0

    def read(self) -> Device:
        dec = nlwire.DeviceDecoder()
        for m in nlwire.iter_messages(self.dump):
            if m.type == nlwire.NLMSG_DONE:
                break
            dec.add(self.dump, m.start, m.end)
        return dec.device()

    def apply(self, p: object) -> None:
        self.applied += 1

    def config_digest(self) -> int | None:
        return None  # no digest: a drift repair reads back


def read_uapi(chunks: list[bytes]) -> Device:
    """What ``UapiBackend.read`` does with a reply received in chunks."""
    texts = (c.decode("ascii", errors="replace") for c in chunks)
    return uapi_text.parse_get_segments(peer_segments(texts))[0]


def scrub_uapi(chunks: list[bytes]) -> int:
    text = b"".join(chunks).decode("ascii", errors="replace")
    return len(idle_from_reply(text, 180.0, time.time()))


def scrub_kernel(dump: bytes) -> int:
    dec = ScrubDecoder(time.time())
    for m in nlwire.iter_messages(dump):
        if m.type == nlwire.NLMSG_DONE:
            break
        dec.add(dump, m.start, m.end)
    return len(dec.idle_peers(180.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=100_000)
    ap.add_argument("--no-tracemalloc", action="store_true")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--trim", action="store_true", help="malloc_trim(0) after each stage")
    args = ap.parse_args()
    Report.trim = args.trim
    n = args.peers
    traced = not args.no_tracemalloc
    print(f"{n:,} peers; python {sys.version.split()[0]}; tracemalloc {'on' if traced else 'off'}")
    print(
        f"imports: RSS {_RSS0 / 1024:.1f} MB bare interpreter -> "
        f"{_RSS_IMPORTS / 1024:.1f} MB with the daemon's modules"
    )
    with tempfile.TemporaryDirectory() as tmp:
        feed1, feed2 = Path(tmp, "feed1.json"), Path(tmp, "feed2.json")
        feed1.write_bytes(snapshot_doc(n, "v1"))
        feed2.write_bytes(snapshot_doc(n, "v2"))
        print(f"snapshot document: {feed1.stat().st_size / 2**20:.1f} MB")
        run_stages(n, traced, args.top, feed1, feed2)
    return 0


def run_stages(n: int, traced: bool, top: int, feed1: Path, feed2: Path) -> None:
    gc.collect()
    if traced:
        tracemalloc.start(1)
    base = tracemalloc.take_snapshot() if traced else None
    rep = Report(n, traced)
    print("\nstages (held: what stays alive afterwards; peak: the stage's own high-water mark)")

    desired: DesiredState = rep.stage(
        "1 parse full snapshot -> DesiredState", lambda: read_file_feed(feed1)[0]
    )
    want = desired.wireguard[IFACE]
    # Read-backs: the dump and the reply are built outside the stages (the
    # kernel's datagrams stream through the decoder; a UAPI reply comes whole).
    wire = Device(None, 51820, want.peers)
    dump = encode_device_dump(FAMILY, wire, max_message=16384)
    reply = format_get_reply(wire).encode()
    chunks = [reply[i : i + (1 << 18)] for i in range(0, len(reply), 1 << 18)]
    print(f"  (kernel dump {len(dump) / 2**20:.1f} MB, UAPI reply {len(reply) / 2**20:.1f} MB)")
    del reply, wire
    backend = DumpBackend(dump)
    read_back: Device = rep.stage("2a read back, kernel dump decode -> Device", backend.read)
    rep.stage("2b read back, UAPI get reply parse -> Device", read_uapi, chunks)
    rep.stage("3 plan: full apply to an empty interface", plan, want.active(NOW), {})
    rep.stage("3b plan: nothing changed (vs read-back)", plan, want.active(NOW), read_back.peers)
    del read_back
    out = rep.stage(
        "4 reconcile pass with read-back (drift repair)", sync_interface, backend, want, NOW, 0.5
    )
    known = out.peers
    del out
    rep.stage("5a scrub pass, UAPI (no one idle)", scrub_uapi, chunks)
    rep.stage("5b scrub pass, kernel dump (no one idle)", scrub_kernel, dump)
    # The synthetic inputs go: what is left is what the daemon holds.
    del chunks, dump
    backend.dump = b""

    seen: set[int] = set()
    print_breakdown("held: DesiredState peers", want.peers, seen, n)
    print_breakdown("held: reconciler's known peers (after a read-back)", known, seen, n)
    del seen
    if traced and base is not None:
        top_lines(base, top)
    gc.collect()
    if Report.trim:
        release_free_memory()
    held_rss = proc_kb("VmRSS")
    print(f"\nresident with desired + known held: RSS {held_rss / 1024:.1f} MB")

    new_desired = rep.stage(
        "6 parse a new full snapshot while the old one is held",
        lambda: read_file_feed(feed2)[0],
    )
    hwm6 = rep.rows[-1][4]
    print(f"  peak while taking it: {hwm6:.1f} MB = {hwm6 * 1024 / held_rss:.2f}x resident")
    desired, want = new_desired, new_desired.wireguard[IFACE]
    del new_desired
    out = rep.stage(
        "7 reconcile pass from known (new snapshot, same peers)",
        lambda: sync_interface(backend, want, NOW, 0.5, known=known),
    )
    known = out.peers
    del out
    gc.collect()
    if Report.trim:
        release_free_memory()
    rss = proc_kb("VmRSS")
    print(
        f"\nsteady state: RSS {rss / 1024:.1f} MB with {n:,} peers held; "
        f"imports {_RSS_IMPORTS / 1024:.1f} MB -> "
        f"{(rss - _RSS_IMPORTS) * 1024 / n:.0f} B/peer above imports"
    )
    if traced:
        print(f"tracemalloc now: {tracemalloc.get_traced_memory()[0] / n:.0f} B/peer held")
    seen = set()
    print_breakdown("held: DesiredState peers", want.peers, seen, n)
    print_breakdown("held: reconciler's known peers (after the new snapshot)", known, seen, n)


if __name__ == "__main__":
    raise SystemExit(main())
