"""The kernel WireGuard backend: what to read and send for the agent, over the codec in ``nlwire``.

:class:`KernelBackend` reads the interface (a GET_DEVICE dump), applies plans
(SET_DEVICE messages, many peers a message and many messages a send, encoded
in a second thread ahead of the sender), sets up the link and serves the
scrubber. The socket, its replies and closing from any thread are
:class:`~nodeagent.wireguard.netlink.conversation.NetlinkConversation`'s.

The peer traffic goes through that plain netlink socket with messages packed
by ``nlwire`` because pyroute2's per-peer encoder is an order of magnitude
slower than ``wg setconf`` at 20,000 peers; pyroute2 only creates the link
(rtnetlink) and resolves the "wireguard" family.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence

from pyroute2 import IPRoute

from nodeagent.core.backend import BackendError
from nodeagent.core.model import Device, InterfaceSetup, Peer, Plan
from nodeagent.wireguard.link import ensure_addresses_up
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.conversation import Connect, NetlinkConversation
from nodeagent.wireguard.netlink.idle import KernelScrubPort
from nodeagent.wireguard.uapi.text import clamp_private_key

log = logging.getLogger(__name__)

MAX_PEERS = 1 << 20


class KernelBackend(NetlinkConversation):
    """One kernel WireGuard interface, driven over generic netlink.

    ``max_message`` bounds each SET_DEVICE message (the peers nest of one
    message must stay under 64 KiB); ``batch_bytes`` bounds how many such
    messages go to the kernel in one send call. ``connect`` replaces opening
    the generic netlink socket (tests hand in one end of a socketpair).

    Calls come from one thread at a time; :meth:`close` from any thread at any
    time. After ``close()`` every call raises ``BackendError``.
    """

    def __init__(
        self,
        interface: str,
        *,
        max_message: int = nlwire.DEFAULT_MESSAGE,
        batch_bytes: int = 256 * 1024,
        connect: Connect | None = None,
    ) -> None:
        super().__init__(interface, batch_bytes=max(batch_bytes, max_message), connect=connect)
        self._max_message = max_message

    @property
    def max_peers(self) -> int:
        """The kernel module's limit on one interface (MAX_PEERS_PER_DEVICE)."""
        return MAX_PEERS

    def presence(self) -> Hashable | None:
        """The link's ifindex: the kernel gives a recreated link a new one."""
        try:
            return socket.if_nametoindex(self.interface)
        except OSError:
            return None

    # --- read ---------------------------------------------------------------

    def read(self) -> Device:
        """Dump the interface's key, port and peers (endpoints and statistics are dropped).

        The device carries the digest of the same dump.
        """
        t0 = time.monotonic()
        dev = self.dump(nlwire.ReadDecoder, "read").device()
        log.debug(
            "wg_read interface=%s peers=%d ms=%d",
            self._interface,
            len(dev.peers),
            (time.monotonic() - t0) * 1000,
        )
        return dev

    def config_digest(self) -> int | None:
        """The configuration digest of one dump, whose peers are not decoded."""
        t0 = time.monotonic()
        digest = self.dump(nlwire.DigestDecoder, "digest").digest()
        log.debug("wg_digest interface=%s ms=%d", self._interface, (time.monotonic() - t0) * 1000)
        return digest

    # --- apply --------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        """Send the plan, many peers a message; every message is acknowledged and checked.

        Messages are encoded in a second thread while this one waits in ``send``:
        the kernel applies a batch inside the system call, with the GIL released,
        so encoding the next batch costs no wall-clock time.
        """
        if plan.empty:
            return
        t0 = time.monotonic()
        with self._call("apply"):
            s = self._socket()
            messages = nlwire.iter_set_peers(
                self._family,
                self._interface,
                nlwire.iter_plan_ops(plan),
                seq=0,
                max_message=self._max_message,
            )
            with _Prefetch(messages) as prefetched:
                sent = self._send_acked(s, prefetched, "apply")
        log.debug(
            "wg_apply interface=%s added=%d updated=%d removed=%d messages=%d ms=%d",
            self._interface,
            len(plan.add),
            len(plan.update),
            len(plan.remove),
            sent,
            (time.monotonic() - t0) * 1000,
        )

    # --- setup --------------------------------------------------------------

    def setup(self, setup: InterfaceSetup) -> None:
        """Create the link if missing; set key and port where they differ; add addresses; up."""
        with self._call("setup"):
            self._setup(setup)

    def _setup(self, setup: InterfaceSetup) -> None:
        self._ensure_link()
        dev = self.read()
        # The kernel reports the clamped form of the key it stores.
        want_key = clamp_private_key(setup.private_key)
        key = want_key if dev.private_key != want_key else None
        port = setup.listen_port if dev.listen_port != setup.listen_port else None
        if key is not None or port is not None:
            s = self._socket()
            msg = nlwire.encode_set_identity(
                self._family, self._interface, private_key=key, listen_port=port, seq=0
            )
            self._send_acked(s, [msg], "setup")
        added = ensure_addresses_up(self._interface, setup.addresses)
        log.info(
            "wg_setup interface=%s key_set=%s port_set=%s addresses_added=%d",
            self._interface,
            key is not None,
            port is not None,
            added,
        )

    def _ensure_link(self) -> None:
        try:
            with IPRoute() as ipr:
                if ipr.link_lookup(ifname=self._interface):
                    return
                ipr.link("add", ifname=self._interface, kind="wireguard")
        except Exception as e:
            code = getattr(e, "code", None) or getattr(e, "errno", None)
            raise BackendError(f"{self._interface}: cannot create link (error {code})") from None
        log.info("wg_link_created interface=%s", self._interface)

    # --- scrubbing: one dump a pass, idle or not (privacy/scrub.py) ---------

    def idle_peers(self, idle_after: float) -> list[Peer]:
        """Peers with an endpoint and no handshake for ``idle_after`` s, as configured."""
        return KernelScrubPort(self).idle_peers(idle_after)

    def readd(self, peers: Sequence[Peer]) -> None:
        """Remove and re-add each peer in one message, which wipes its endpoint."""
        KernelScrubPort(self).readd(peers)


class _Prefetch:
    """Runs an iterator in a worker thread, a bounded number of items ahead of the reader.

    Exceptions raised by the iterator are re-raised in the reader. Leaving the
    ``with`` block early (an error while sending) stops the worker.
    """

    _DONE = object()

    def __init__(self, source: Iterable[bytes], depth: int = 8) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nl-encode", daemon=True)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the reader, which re-raises it
            self._error = e
        self._put(self._DONE)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                if self._error is not None:
                    raise self._error
                return
            assert isinstance(item, bytes)
            yield item

    def __enter__(self) -> _Prefetch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
