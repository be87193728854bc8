"""Searching everything the agent emitted for the secrets of known clients (leak tests).

Also runnable as ``python -m tests.netns.leakcheck run -c FILE``: the agent with a
test-only leak planted (``NODEAGENT_PLANT_LEAK=print|disk|log``), so that a test
can show the search catches what a careless change would emit.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE = 16 << 20


@dataclass
class Secrets:
    """Every needle, as the bytes it would appear as (keys in base64 and hex)."""

    needles: dict[str, bytes] = field(default_factory=dict)

    def key(self, label: str, key: bytes) -> None:
        self.needles[f"{label} (base64)"] = base64.b64encode(key)
        self.needles[f"{label} (base64, unpadded)"] = base64.b64encode(key).rstrip(b"=")
        self.needles[f"{label} (url-safe base64)"] = base64.urlsafe_b64encode(key).rstrip(b"=")
        self.needles[f"{label} (hex)"] = key.hex().encode()

    def address(self, label: str, text: str) -> None:
        addr = ipaddress.ip_address(text)
        self.needles[label] = str(addr).encode()
        if addr.version == 6:
            self.needles[f"{label} (exploded)"] = addr.exploded.encode()
        self.needles[f"{label} (packed hex)"] = addr.packed.hex().encode()

    def search(self, haystacks: Iterable[tuple[str, bytes]]) -> list[str]:
        """ "<needle> in <source>" for every hit; empty when nothing leaked. Never prints values."""
        hits: list[str] = []
        for source, data in haystacks:
            low = data.lower()
            for label, needle in self.needles.items():
                hay = low if needle.isascii() and "hex" in label else data
                if needle in hay:
                    hits.append(f"{label} in {source}")
        return hits


def snapshot(roots: Iterable[Path]) -> dict[Path, tuple[int, int]]:
    """(size, mtime_ns) of every regular file under ``roots``."""
    out: dict[Path, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                p = Path(dirpath, name)
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if p.is_file() and not p.is_symlink():
                    out[p] = (st.st_size, st.st_mtime_ns)
    return out


def changed_files(
    before: dict[Path, tuple[int, int]], after: dict[Path, tuple[int, int]]
) -> Iterator[tuple[str, bytes]]:
    """The contents of files created or modified between two snapshots."""
    for p, meta in after.items():
        if before.get(p) == meta or meta[0] > MAX_FILE:
            continue
        try:
            yield f"file {p}", p.read_bytes()
        except OSError:
            continue


def _plant() -> None:
    """A deliberate leak of each peer's endpoint, the shape a careless debug line would take."""
    import logging

    from nodeagent.wireguard import uapi_text
    from nodeagent.wireguard.uapi import UapiBackend, exchange

    mode = os.environ.get("NODEAGENT_PLANT_LEAK", "")
    original = UapiBackend.read
    log = logging.getLogger("nodeagent.wireguard.uapi")

    def read(self: UapiBackend) -> object:
        reply = exchange(self.socket_path, uapi_text.GET_REQUEST)
        for line in reply.splitlines():
            if line.startswith("endpoint="):
                endpoint = line.partition("=")[2]
                if mode == "print":
                    print(f"debug endpoint {endpoint}", file=sys.stderr, flush=True)
                elif mode == "disk":
                    with open("peers.debug", "a") as f:
                        f.write(endpoint + "\n")
                elif mode == "log":
                    log.debug("peer endpoint=%s", endpoint)
        return original(self)

    UapiBackend.read = read  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    _plant()
    from nodeagent.cli import main

    sys.exit(main(sys.argv[1:]))
