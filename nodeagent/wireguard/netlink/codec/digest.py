"""The configuration digest of a GET_DEVICE dump, without decoding its peers.

What the agent configures, and nothing else, goes into the digest: each
peer's public key, preshared key and allowed IPs, and the device's private key
and port. Endpoints, handshake times, byte counters, keepalive and protocol
version are skipped, never read (see ``core.backend.Backend.config_digest``).

Each peer is hashed whole: its public key, its preshared key (zero when
absent), and the raw allowed-IP elements of its WGPEER_A_ALLOWEDIPS nests.
A peer the kernel split across messages (its allowed IPs continue in the next
one under the same key, ``DeviceDecoder`` merges them) is hashed as one, so
where the kernel's buffers happened to fill, which moves with every endpoint
that appears, does not change the digest. The peers' hashes are summed
(modulo 2**64): the kernel's order, which a scrubber's re-add changes, does
not matter either.

The common peer takes the decoder's fast path (``decode.PEER_FAST``: the
kernel's fixed first attributes, checked by their headers), one slice per
part; anything else is walked attribute by attribute with the bounds checks
of ``framing.iter_attrs``. A dump the decoder refuses ends in ``DecodeError``
here too (its checks are the same); an odd one it takes yields no digest.
"""

from __future__ import annotations

import struct

from nodeagent.core.backend import DIGEST_MASK
from nodeagent.core.model import KEY_LEN, ZERO_KEY, Device
from nodeagent.wireguard.netlink.codec.constants import (
    NLA_HDR,
    NLA_TYPE_MASK,
    WGPEER_A_ALLOWEDIPS,
    WGPEER_A_ENDPOINT,
    WGPEER_A_PRESHARED_KEY,
    WGPEER_A_PUBLIC_KEY,
)
from nodeagent.wireguard.netlink.codec.decode import (
    PEER_FAST,
    PEER_FAST_HDRS,
    DeviceDecoder,
    walk_device,
)
from nodeagent.wireguard.netlink.codec.framing import DecodeError, iter_attrs

# The fast path's headers only: the keys are sliced, the activity never read.
_FAST_HEADS = struct.Struct("=HH32x HH32x HH16x HH4x HH8x HH8x HH4x")
_FAST_WANT = (36, WGPEER_A_PUBLIC_KEY, 36, WGPEER_A_PRESHARED_KEY, *PEER_FAST_HDRS)
_FAST_SIZE = PEER_FAST.size
assert _FAST_HEADS.size == _FAST_SIZE
# What a peer's hashed bytes start with: key, the preshared key's header, preshared key.
_PSK_HEAD = NLA_HDR.pack(4 + KEY_LEN, WGPEER_A_PRESHARED_KEY)


class DigestDecoder:
    """Accumulates the GET_DEVICE dump replies of one interface into its configuration digest.

    A ``DumpDecoder`` (``add`` takes each reply's genl payload), like
    ``DeviceDecoder``, and fed the same replies it groups peers as that one
    does: an element under the key of the one before continues that peer.
    ``peers`` counts the peers so grouped: when it equals the number of peers
    the decoder found, no key was listed twice apart, and a dump with the same
    digest holds the same peers (see ``KernelBackend.read``).
    """

    def __init__(self) -> None:
        self.peers = 0
        # An allowed-IPs nest whose length is no multiple of 4 may end in bytes the
        # decoder skips; joined to a continuation's, they would be walked as other
        # elements. No kernel writes one; the digest of such a dump is unknown.
        self.usable = True
        self._sum = 0
        self._private_key = b""
        self._listen_port = -1
        self._last_key: bytes | None = None
        self._last: bytes = b""  # the bytes hashed for the last peer, while it may continue

    def add(self, buf: bytes, start: int, end: int) -> None:
        """Take one reply's genl payload (``buf[start:end]``, after the netlink header)."""
        key, port = walk_device(buf, start, end, self._peers_nest)
        if key is not None:
            self._private_key = key
        if port is not None:
            self._listen_port = port

    def digest(self) -> int | None:
        """The digest of the replies taken so far (call after NLMSG_DONE); None if unknown."""
        if not self.usable:
            return None
        return (self._sum + hash((self._private_key, self._listen_port))) & DIGEST_MASK

    def _peers_nest(self, buf: bytes, pos: int, end: int) -> None:
        # The hot loop: one element a peer, attribute walker and fast path inline.
        unpack_heads, unpack_hdr, want = _FAST_HEADS.unpack_from, NLA_HDR.unpack_from, _FAST_WANT
        while pos + 4 <= end:
            plen = unpack_hdr(buf, pos)[0]
            pend = pos + plen
            if plen < 4 or pend > end:
                raise DecodeError("bad peer length")
            p = pos + 4
            pos += (plen + 3) & ~3
            if p + _FAST_SIZE <= pend and unpack_heads(buf, p) == want:
                key = buf[p + 4 : p + 36]
                head = buf[p + 4 : p + 72]
                q = p + _FAST_SIZE
                # Then the kernel writes the endpoint, if any, and the allowed IPs up to the end.
                if q + 4 <= pend:
                    alen, atype = unpack_hdr(buf, q)
                    if atype & NLA_TYPE_MASK == WGPEER_A_ENDPOINT and 4 <= alen <= pend - q:
                        q += (alen + 3) & ~3
                        if q + 4 <= pend:
                            alen, atype = unpack_hdr(buf, q)
                    if (
                        q + 4 <= pend
                        and atype & NLA_TYPE_MASK == WGPEER_A_ALLOWEDIPS
                        and q + alen == pend
                        and not alen & 3  # else the slow path, which says it is unusable
                    ):
                        self._peer(key, head, buf[q + 4 : pend])
                        continue
            # Any other layout: the whole element, as the decoder's slow path takes it.
            self._element(buf, p, pend)

    def _peer(self, key: bytes, head: bytes, ips: bytes) -> None:
        """One element: a new peer, or the continuation of the last one (same key)."""
        if key == self._last_key:
            self._sum -= hash(self._last)
            self._last += ips
        else:
            self._last_key, self._last = key, head + ips
            self.peers += 1
        self._sum += hash(self._last)

    def _element(self, buf: bytes, p: int, pend: int) -> None:
        """An element off the fast path: its attributes in any order (the last key counts)."""
        key: bytes | None = None
        psk = ZERO_KEY
        ips: list[bytes] = []
        for atype, a, b in iter_attrs(buf, p, pend, "bad peer attribute length"):
            if atype == WGPEER_A_PUBLIC_KEY:
                if b - a != KEY_LEN:
                    raise DecodeError("bad public key length")
                key = buf[a:b]
            elif atype == WGPEER_A_PRESHARED_KEY:
                if b - a != KEY_LEN:
                    raise DecodeError("bad preshared key length")
                psk = buf[a:b]
            elif atype == WGPEER_A_ALLOWEDIPS:
                if (b - a) & 3:
                    self.usable = False  # see ``usable``
                ips.append(buf[a:b])
        if key is None:
            raise DecodeError("peer without public key")
        self._peer(key, key + _PSK_HEAD + psk, b"".join(ips))


class ReadDecoder:
    """A read's dump, decoded and digested at once: the device and the digest of the same replies.

    The digest is kept (``Device.digest``) only when both saw the same number
    of peers: a key listed twice apart (which the kernel never does) is decoded
    as its last listing but hashed twice, and such a digest vouches for nothing.
    """

    def __init__(self) -> None:
        self._decoder = DeviceDecoder()
        self._digest = DigestDecoder()

    def add(self, buf: bytes, start: int, end: int) -> None:
        """Take one reply's genl payload (``buf[start:end]``, after the netlink header)."""
        self._decoder.add(buf, start, end)
        self._digest.add(buf, start, end)

    def device(self) -> Device:
        """The device decoded so far, with its digest (call after NLMSG_DONE)."""
        dev = self._decoder.device()
        digest = self._digest.digest() if self._digest.peers == len(dev.peers) else None
        return Device(dev.private_key, dev.listen_port, dev.peers, digest)
