"""A drift repair with nothing drifted: read back + plan, against the configuration digest check.

    python bench/digest_bench.py [--peers 60000 100000] [--repeat 3]

In-process, no root and no WireGuard: a synthetic wireguard-go ``get=1``
reply (every peer an IPv4 /32, every second an IPv6 /128, every third a
preshared key; half of them with an endpoint, a handshake time and byte
counts) and a synthetic kernel GET_DEVICE dump of the same peers (16 KiB
messages, the kernel's attribute layout). For each, in milliseconds (best of
``--repeat``):

* before: what a drift repair did until now, the read (the reply parsed, or
  the dump decoded, without a digest) and ``plan`` + ``share_equal`` against
  the feed's peers;
* read + plan now: the same with the read's digest computed too, which is
  what a repair costs when the digest differs (or none was recorded);
* digest check: what a repair costs now when nothing changed (the reply's
  digest, or the dump's), the reply decoded from bytes to text as the socket
  conversation does in each UAPI row.

The socket conversation itself (wireguard-go writing the reply, the kernel
building the dump) is the same for both and not measured here.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodeagent.core.model import Device, Peer
from nodeagent.core.reconcile import plan, share_equal
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.uapi import text as uapi_text
from tests.peerdata import key, make_peers
from tests.wgencode import encode_device_dump, format_get_reply

FAMILY = 0x20


def busy_reply(dev: Device) -> bytes:
    """``format_get_reply(dev)`` with activity on every second peer, as wireguard-go writes it."""
    rng = random.Random(1)
    out: list[str] = []
    now = 1_800_000_000
    busy = False
    for line in format_get_reply(dev).split("\n"):
        name = line.partition("=")[0]
        busy = rng.random() < 0.5 if name == "protocol_version" else busy
        if name == "protocol_version" and busy:
            out.append(line)
            out.append(f"endpoint=198.51.{rng.randrange(256)}.{rng.randrange(256)}:51820")
            continue
        if busy and name == "last_handshake_time_sec":
            line = f"{name}={now - rng.randrange(600)}"
        elif busy and name == "last_handshake_time_nsec":
            line = f"{name}={rng.randrange(10**9)}"
        elif busy and name in ("tx_bytes", "rx_bytes"):
            line = f"{name}={rng.randrange(1 << 34)}"
        out.append(line)
    return "\n".join(out).encode()


def best(call: Callable[[], object], repeat: int, *, paused: bool) -> float:
    times: list[float] = []
    for _ in range(repeat):
        gc.collect()
        if paused:  # the kernel backend pauses the collector during a dump
            gc.disable()
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
        gc.enable()
    return min(times)


def reconcile(actual: dict[bytes, Peer] | object, desired: dict[bytes, Peer]) -> None:
    assert isinstance(actual, dict) or hasattr(actual, "items")
    p = plan(desired, actual)  # type: ignore[arg-type]
    assert p.empty
    share_equal(actual, desired)  # type: ignore[arg-type]


def uapi_before(reply: bytes, desired: dict[bytes, Peer]) -> None:
    lines, _ = uapi_text.split_reply(reply.decode("ascii", errors="replace"))
    reconcile(uapi_text.parse_device(lines).peers, desired)


def uapi_read_now(reply: bytes, desired: dict[bytes, Peer]) -> None:
    dev, _ = uapi_text.parse_get_reply(reply.decode("ascii", errors="replace"))
    assert dev.digest is not None
    reconcile(dev.peers, desired)


def uapi_digest(reply: bytes) -> int:
    return uapi_text.reply_digest(reply.decode("ascii", errors="replace"))[0]


Decoder = nlwire.DeviceDecoder | nlwire.DigestDecoder | nlwire.ReadDecoder


def feed(dump: bytes, dec: Decoder) -> None:
    for m in nlwire.iter_messages(dump):
        if m.type == FAMILY:
            dec.add(dump, m.start, m.end)


def kernel_before(dump: bytes, desired: dict[bytes, Peer]) -> None:
    dec = nlwire.DeviceDecoder()
    feed(dump, dec)
    reconcile(dec.device().peers, desired)


def kernel_read_now(dump: bytes, desired: dict[bytes, Peer]) -> None:
    dec = nlwire.ReadDecoder()
    feed(dump, dec)
    dev = dec.device()
    assert dev.digest is not None
    reconcile(dev.peers, desired)


def kernel_digest(dump: bytes) -> int | None:
    dec = nlwire.DigestDecoder()
    feed(dump, dec)
    return dec.digest()


def rows(n: int, repeat: int) -> list[tuple[str, float, float, float, str]]:
    desired = make_peers(n)
    dev = Device(key("priv", 0), 51820, desired)
    reply = busy_reply(dev)
    dump = encode_device_dump(FAMILY, dev, max_message=16384)
    # Sanity: both digests are those of a read, and see through the activity.
    assert uapi_digest(reply) == uapi_text.parse_get_reply(format_get_reply(dev))[0].digest
    assert kernel_digest(dump) is not None
    return [
        (
            f"wireguard-go, {n:,} peers",
            best(lambda: uapi_before(reply, desired), repeat, paused=False),
            best(lambda: uapi_read_now(reply, desired), repeat, paused=False),
            best(lambda: uapi_digest(reply), repeat, paused=False),
            f"{len(reply) / 2**20:.0f} MB reply",
        ),
        (
            f"kernel, {n:,} peers",
            best(lambda: kernel_before(dump, desired), repeat, paused=True),
            best(lambda: kernel_read_now(dump, desired), repeat, paused=True),
            best(lambda: kernel_digest(dump), repeat, paused=True),
            f"{len(dump) / 2**20:.0f} MB dump",
        ),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[60_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}; best of {args.repeat}; ms")
    print(f"{'':<28}{'before':>10}{'read+plan now':>15}{'digest check':>14}{'ratio':>8}")
    for n in args.peers:
        for name, before, now, check, size in rows(n, args.repeat):
            ratio = before / check
            print(f"{name:<28}{before:>10.0f}{now:>15.0f}{check:>14.0f}{ratio:>7.1f}x  {size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
