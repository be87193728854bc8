"""WireGuard generic-netlink messages to and from bytes. Pure: no sockets, no pyroute2.

The kernel backend (``netlink.backend``) sends what this package encodes and
feeds it what the kernel answers; callers use the names below
(``from nodeagent.wireguard.netlink import codec as nlwire``). Inside:

* ``constants``: the protocol's numbers, header layouts and size limits;
* ``framing``: messages in a datagram, error replies, the one attribute walker;
* ``decode``: GET_DEVICE dump replies into a ``Device``;
* ``digest``: GET_DEVICE dump replies into a configuration digest, undecoded;
* ``encode``: SET_DEVICE messages for a plan's peers, packed many a message,
  and the GET_DEVICE request.

Wire layout (``include/uapi/linux/wireguard.h``): a netlink header, a genl
header (command, version 1), then attributes. Peers and allowed IPs are nested
lists whose elements carry type 0, as wireguard-tools writes them. Integers are
in host byte order, addresses in network byte order.
"""

from __future__ import annotations

from nodeagent.wireguard.netlink.codec.constants import (
    DEFAULT_MESSAGE,
    GENL_HDR,
    MAX_MESSAGE,
    NLA_F_NESTED,
    NLA_HDR,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    WG_CMD_GET_DEVICE,
    WG_CMD_SET_DEVICE,
    WG_GENL_VERSION,
    WGALLOWEDIP_A_CIDR_MASK,
    WGALLOWEDIP_A_FAMILY,
    WGALLOWEDIP_A_IPADDR,
    WGDEVICE_A_FLAGS,
    WGDEVICE_A_FWMARK,
    WGDEVICE_A_IFINDEX,
    WGDEVICE_A_IFNAME,
    WGDEVICE_A_LISTEN_PORT,
    WGDEVICE_A_PEERS,
    WGDEVICE_A_PRIVATE_KEY,
    WGDEVICE_A_PUBLIC_KEY,
    WGPEER_A_ALLOWEDIPS,
    WGPEER_A_ENDPOINT,
    WGPEER_A_FLAGS,
    WGPEER_A_LAST_HANDSHAKE_TIME,
    WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
    WGPEER_A_PRESHARED_KEY,
    WGPEER_A_PROTOCOL_VERSION,
    WGPEER_A_PUBLIC_KEY,
    WGPEER_A_RX_BYTES,
    WGPEER_A_TX_BYTES,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
)
from nodeagent.wireguard.netlink.codec.decode import DeviceDecoder, decode_device
from nodeagent.wireguard.netlink.codec.digest import DigestDecoder, ReadDecoder
from nodeagent.wireguard.netlink.codec.encode import (
    PeerOp,
    encode_get_device,
    encode_set_device,
    encode_set_identity,
    encode_set_peers,
    iter_plan_ops,
    iter_set_peers,
    plan_ops,
)
from nodeagent.wireguard.netlink.codec.framing import (
    DecodeError,
    Message,
    error_code,
    iter_attrs,
    iter_messages,
)

__all__ = [
    "DEFAULT_MESSAGE",
    "GENL_HDR",
    "MAX_MESSAGE",
    "NLA_F_NESTED",
    "NLA_HDR",
    "NLA_TYPE_MASK",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_HDR",
    "NLM_F_ACK",
    "NLM_F_DUMP",
    "NLM_F_DUMP_INTR",
    "NLM_F_MULTI",
    "NLM_F_REQUEST",
    "WGALLOWEDIP_A_CIDR_MASK",
    "WGALLOWEDIP_A_FAMILY",
    "WGALLOWEDIP_A_IPADDR",
    "WGDEVICE_A_FLAGS",
    "WGDEVICE_A_FWMARK",
    "WGDEVICE_A_IFINDEX",
    "WGDEVICE_A_IFNAME",
    "WGDEVICE_A_LISTEN_PORT",
    "WGDEVICE_A_PEERS",
    "WGDEVICE_A_PRIVATE_KEY",
    "WGDEVICE_A_PUBLIC_KEY",
    "WGPEER_A_ALLOWEDIPS",
    "WGPEER_A_ENDPOINT",
    "WGPEER_A_FLAGS",
    "WGPEER_A_LAST_HANDSHAKE_TIME",
    "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL",
    "WGPEER_A_PRESHARED_KEY",
    "WGPEER_A_PROTOCOL_VERSION",
    "WGPEER_A_PUBLIC_KEY",
    "WGPEER_A_RX_BYTES",
    "WGPEER_A_TX_BYTES",
    "WGPEER_F_REMOVE_ME",
    "WGPEER_F_REPLACE_ALLOWEDIPS",
    "WGPEER_F_UPDATE_ONLY",
    "WG_CMD_GET_DEVICE",
    "WG_CMD_SET_DEVICE",
    "WG_GENL_VERSION",
    "DecodeError",
    "DeviceDecoder",
    "DigestDecoder",
    "Message",
    "PeerOp",
    "ReadDecoder",
    "decode_device",
    "encode_get_device",
    "encode_set_device",
    "encode_set_identity",
    "encode_set_peers",
    "error_code",
    "iter_attrs",
    "iter_messages",
    "iter_plan_ops",
    "iter_set_peers",
    "plan_ops",
]
