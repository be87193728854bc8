"""UapiBackend against the reference tool ``wg``, on real wireguard-go (root).

    python bench/uapi_bench.py [--peers 20000] [--change 200] [--repeat 3]

Two fresh wireguard-go interfaces in one namespace: ``wg`` drives one, our
backend the other, with the same peers. Measured: the initial full load
(``wg setconf`` vs one ``apply`` of the full plan), a read-back (``wg show
dump`` vs ``read()``), what the daemon reads on its own while nothing changes
(the drift check's ``config_digest()`` and the scrub's ``idle_peers()``, with
1 % of the peers given an endpoint, each beside ``wg show dump``), and a change
of ``--change`` peers (``wg syncconf`` vs read + plan + apply). The reads are
the best of ``--repeat``. Prints seconds, the ratio ours / wg, and the CPU our
side spent (this thread's user + system time: what the daemon pays, as
opposed to wireguard-go writing the reply). A benchmark, not a test: it
asserts only that both interfaces end in the desired state.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodeagent.core.model import Peer, format_key
from nodeagent.core.reconcile import plan
from nodeagent.lab.netns import missing_prerequisites
from nodeagent.lab.tunnel import Lab
from nodeagent.wireguard.uapi.backend import UapiBackend
from tests.peerdata import key, make_peers, v4


def wg_config(private_key: bytes, peers: Mapping[bytes, Peer]) -> str:
    lines = ["[Interface]", f"PrivateKey = {format_key(private_key)}", ""]
    for p in peers.values():
        lines.append("[Peer]")
        lines.append(f"PublicKey = {format_key(p.public_key)}")
        if p.preshared_key:
            lines.append(f"PresharedKey = {format_key(p.preshared_key)}")
        if p.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(ip) for ip in sorted(p.allowed_ips)))
        lines.append("")
    return "\n".join(lines)


def timed(fn: Callable[[], object]) -> float:
    return measured(fn)[0]


def measured(fn: Callable[[], object], repeat: int = 1) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) of the fastest of ``repeat`` calls."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.thread_time() - cpu))
    return best


def wg(*args: str) -> Callable[[], object]:
    def call() -> object:
        return subprocess.run(["wg", *args], check=True, stdout=subprocess.DEVNULL)

    return call


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=20_000)
    ap.add_argument("--change", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("cannot run:", ", ".join(missing), file=sys.stderr)
        return 1

    desired = make_peers(args.peers)
    private_key = key("bench-private", 0)
    changed = dict(desired)
    for i, k in enumerate(sorted(desired)[: args.change]):
        changed[k] = Peer(k, frozenset({v4(i, 11)}), desired[k].preshared_key)

    rows: list[tuple[str, float, float, float | None]] = []
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        ns = lab.namespace("nab")
        ref = lab.wireguard_go(ns, "wgbr")
        ours_dev = lab.wireguard_go(ns, "wgbo")
        ours = UapiBackend(ours_dev.name, ours_dev.socket_path)
        conf1, conf2 = Path(tmp, "full.conf"), Path(tmp, "changed.conf")
        conf1.write_text(wg_config(private_key, desired))
        conf2.write_text(wg_config(private_key, changed))
        os.chmod(tmp, 0o700)

        t_wg = timed(wg("setconf", ref.name, str(conf1)))

        def full_apply() -> None:
            ours.apply(plan(desired, ours.read().peers))

        t_ours = timed(full_apply)
        rows.append((f"full load, {args.peers} peers (setconf | apply)", t_wg, t_ours, None))

        # 1 % of the peers with an endpoint (and no handshake): the ones a scrub looks at.
        endpoints: list[str] = []
        for k in sorted(desired)[::100]:
            endpoints += [f"public_key={k.hex()}", "endpoint=192.0.2.1:51820"]
        ours_dev.uapi_set(endpoints)
        t_wg = measured(wg("show", ref.name, "dump"), args.repeat)[0]
        for name, fn in (
            ("read back (show dump | read)", ours.read),
            ("drift check (show dump | config_digest)", ours.config_digest),
            ("scrub read (show dump | idle_peers)", lambda: ours.idle_peers(180.0)),
        ):
            rows.append((name, t_wg, *measured(fn, args.repeat)))

        t_wg = timed(wg("syncconf", ref.name, str(conf2)))

        def change() -> None:
            ours.apply(plan(changed, ours.read().peers))

        t_ours = timed(change)
        rows.append((f"{args.change}-peer change (syncconf | read+plan+apply)", t_wg, t_ours, None))

        # Both interfaces must hold exactly the changed state.
        assert dict(ours.read().peers) == changed
        assert dict(UapiBackend(ref.name, ref.socket_path).read().peers) == changed

    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'wg s':>8}  {'ours s':>8}  {'ours/wg':>8}  {'our CPU ms':>10}")
    for name, t_wg, t_ours, cpu in rows:
        spent = f"{cpu * 1000:10.1f}" if cpu is not None else f"{'':10}"
        print(f"{name:<{width}}  {t_wg:8.3f}  {t_ours:8.3f}  {t_ours / t_wg:8.2f}  {spent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
