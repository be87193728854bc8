"""Encoders only the tests need: what the kernel and wireguard-go answer a ``get``.

``encode_device_dump`` writes a GET_DEVICE dump answer as the kernel does (for
the codec's unit and fuzz tests and for measuring the decoder);
``format_get_reply`` writes a ``get=1`` reply as wireguard-go does (for fake
daemons and round-trip tests). The agent itself only ever reads these.
"""

from __future__ import annotations

import struct

from nodeagent.core.model import ZERO_KEY, Device
from nodeagent.core.routes import AllowedIP
from nodeagent.wireguard.netlink.codec.constants import (
    GENL_HDR,
    NLA_F_NESTED,
    NLA_HDR,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_HDR,
    U16,
    WG_CMD_GET_DEVICE,
    WG_GENL_VERSION,
    WGALLOWEDIP_A_CIDR_MASK,
    WGALLOWEDIP_A_FAMILY,
    WGALLOWEDIP_A_IPADDR,
    WGDEVICE_A_LISTEN_PORT,
    WGDEVICE_A_PRIVATE_KEY,
    WGPEER_A_LAST_HANDSHAKE_TIME,
    WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
    WGPEER_A_PROTOCOL_VERSION,
    WGPEER_A_RX_BYTES,
    WGPEER_A_TX_BYTES,
)
from nodeagent.wireguard.netlink.codec.encode import (
    NEST_HDR_LEN,
    PeerOp,
    attr,
    pack_elements,
    peer_elements,
    peers_nest,
)

# What the kernel's GET_DEVICE puts after a peer's keys, in this order, zeroed:
# last handshake (timespec64), keepalive (u16), tx and rx bytes (u64), protocol
# version (u32). The decoder's fast path (codec.decode) expects exactly this.
KERNEL_STATS = (
    NLA_HDR.pack(20, WGPEER_A_LAST_HANDSHAKE_TIME) + bytes(16)
    + NLA_HDR.pack(6, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL) + bytes(4)
    + NLA_HDR.pack(12, WGPEER_A_TX_BYTES) + bytes(8)
    + NLA_HDR.pack(12, WGPEER_A_RX_BYTES) + bytes(8)
    + NLA_HDR.pack(8, WGPEER_A_PROTOCOL_VERSION) + struct.pack("=I", 1)
)  # fmt: skip


def route_element(ip: AllowedIP) -> bytes:
    """One allowed IP as an element of a peer's WGPEER_A_ALLOWEDIPS nest (family, address, mask)."""
    return attr(
        NLA_F_NESTED,
        attr(WGALLOWEDIP_A_FAMILY, U16.pack(ip.family))
        + attr(WGALLOWEDIP_A_IPADDR, ip.address)
        + attr(WGALLOWEDIP_A_CIDR_MASK, bytes([ip.cidr])),
    )


def encode_device_dump(
    family: int,
    device: Device,
    *,
    seq: int = 1,
    pid: int = 0,
    max_message: int = 4096,
    interrupted: bool = False,
) -> bytes:
    """The GET_DEVICE dump answer the kernel would send for ``device``, NLMSG_DONE included.

    Like the kernel, it fills each message until ``max_message`` and splits a
    peer's allowed IPs across messages; the continuation repeats only the key.
    The device's port and key go in the first message only.
    """
    head = GENL_HDR.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0)
    dev_attrs = attr(WGDEVICE_A_LISTEN_PORT, U16.pack(device.listen_port))
    if device.private_key is not None:
        dev_attrs += attr(WGDEVICE_A_PRIVATE_KEY, device.private_key)
    flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if interrupted else 0)
    ops = [
        PeerOp(p.public_key, 0, p.preshared_key or ZERO_KEY, p.allowed_ips)
        for p in device.peers.values()
    ]
    room = max_message - NLMSG_HDR.size - len(head) - len(dev_attrs) - NEST_HDR_LEN
    elements = (
        e for op in ops for e in peer_elements(op, room, with_flags=False, extra=KERNEL_STATS)
    )
    msgs: list[bytes] = []
    for batch in list(pack_elements(elements, room)) or [[]]:
        payload = head + (dev_attrs if not msgs else b"") + peers_nest(batch)
        msgs.append(
            NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), family, flags, seq, pid) + payload
        )
    done = NLMSG_HDR.pack(NLMSG_HDR.size + 4, NLMSG_DONE, NLM_F_MULTI, seq, pid) + bytes(4)
    return b"".join(msgs) + done


def format_get_reply(device: Device, errno: int = 0) -> str:
    """A ``get=1`` reply as wireguard-go writes it: for fake daemons and round-trip tests."""
    out: list[str] = []
    if device.private_key is not None:
        out.append(f"private_key={device.private_key.hex()}")
    if device.listen_port:
        out.append(f"listen_port={device.listen_port}")
    for peer in device.peers.values():
        out.append(f"public_key={peer.public_key.hex()}")
        out.append(f"preshared_key={(peer.preshared_key or ZERO_KEY).hex()}")
        out.append("protocol_version=1")
        out.append("last_handshake_time_sec=0")
        out.append("last_handshake_time_nsec=0")
        out.append("tx_bytes=0")
        out.append("rx_bytes=0")
        out.append("persistent_keepalive_interval=0")
        out.extend(f"allowed_ip={ip}" for ip in sorted(peer.allowed_ips))
    out.append(f"errno={errno}")
    return "\n".join(out) + "\n\n"
