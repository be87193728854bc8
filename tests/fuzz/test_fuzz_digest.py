"""Fuzz target: configuration digests of UAPI replies and netlink dumps.

Inputs: the replies and dumps of ``test_fuzz_uapi`` and ``test_fuzz_netlink``
(as wireguard-go and the kernel write them, mutated, and random). Each digest
function ends in its parser's own error or a value (``BackendError`` for the
backends, also when the conversation fails); a read's digest is that of the
same reply; and an input whose digest equals that of a well-formed reply
either fails to decode or decodes to the very same device, so that an equal
digest never hides a change.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodeagent.core.backend import DIGEST_MASK, BackendError
from nodeagent.core.model import Device
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.backend import UapiBackend
from tests.fuzz.harness import ended_well, target
from tests.fuzz.test_fuzz_netlink import FAMILY, SEQ, edits, wireguard_bytes
from tests.fuzz.test_fuzz_netlink import _mutate as nl_mutate
from tests.fuzz.test_fuzz_netlink import device as nl_device
from tests.fuzz.test_fuzz_uapi import _mutate as uapi_mutate
from tests.fuzz.test_fuzz_uapi import activity, answer, any_reply, mutations, reply_lines, scripted
from tests.fuzz.test_fuzz_uapi import device as uapi_device
from tests.wgencode import encode_device_dump

# --- UAPI -------------------------------------------------------------------------------

Activity = tuple[str | None, int, int]
Mutation = tuple[int, int, int, str, str]


def check_digest(value: object) -> None:
    assert isinstance(value, int) and 0 <= value <= DIGEST_MASK


@target(300)
@given(any_reply)
def test_reply_digest(text: str) -> None:
    result = ended_well(
        lambda: uapi_text.reply_digest(text), uapi_text.UapiProtocolError, source=text
    )
    if isinstance(result, uapi_text.UapiProtocolError):
        return
    digest, code = result
    check_digest(digest)
    assert isinstance(code, int)
    parsed = ended_well(
        lambda: uapi_text.parse_get_reply(text), uapi_text.UapiProtocolError, source=text
    )
    # The ending and errno checks are the read's: a digest whenever a read parses.
    if not isinstance(parsed, uapi_text.UapiProtocolError):
        dev, _ = parsed
        assert dev.digest is None or dev.digest == digest


@target(300)
@given(uapi_device, activity, activity, mutations)
def test_equal_reply_digest_means_the_same_device(
    dev: Device,
    before: list[tuple[str | None, int, int]],
    after: list[tuple[str | None, int, int]],
    ops: list[tuple[int, int, int, str, str]],
) -> None:
    recorded, _ = uapi_text.parse_get_reply("\n".join(reply_lines(dev, before)) + "\n\n")
    assert recorded == dev and recorded.digest is not None
    text = "\n".join(uapi_mutate(reply_lines(dev, after), ops)) + "\n\n"
    result = ended_well(lambda: uapi_text.reply_digest(text), uapi_text.UapiProtocolError)
    if isinstance(result, uapi_text.UapiProtocolError) or result != (recorded.digest, 0):
        return
    parsed = ended_well(lambda: uapi_text.parse_get_reply(text), uapi_text.UapiProtocolError)
    if not isinstance(parsed, uapi_text.UapiProtocolError):
        assert parsed[0] == dev, "an equal digest hid a change"


@target(300)
@given(answer)
def test_uapi_backend_digest(first: str | OSError) -> None:
    source = first if isinstance(first, str) else ""
    backend = UapiBackend("wgfuzz0", "/nonexistent", exchange_fn=scripted([first]))
    result = ended_well(backend.config_digest, BackendError, source=source)
    if not isinstance(result, BackendError):
        check_digest(result)


# --- netlink ----------------------------------------------------------------------------


def digest_messages(data: bytes) -> None:
    messages = ended_well(lambda: list(nlwire.iter_messages(data)), nlwire.DecodeError)
    if isinstance(messages, nlwire.DecodeError):
        return
    # Fed a message with the buffer cut right after it, and with other bytes after it,
    # a digest decoder must end the same: it reads nothing past a message's end.
    digs = [nlwire.DigestDecoder() for _ in range(3)]
    decoder, read = nlwire.DeviceDecoder(), nlwire.ReadDecoder()
    for m in messages:
        outcomes = [
            ended_well(lambda m=m, d=d, b=b: d.add(b, m.start, m.end), nlwire.DecodeError)
            for d, b in zip(digs, (data, data[: m.end], data[: m.end] + b"\xff" * 64), strict=True)
        ]
        assert len({type(o) for o in outcomes}) == 1, "a digest decoder read past the message"
        decoded = ended_well(lambda m=m: decoder.add(data, m.start, m.end), nlwire.DecodeError)
        # The digest checks less than the decoder (it reads no route): never more.
        assert decoded is not None or outcomes[0] is None, "the digest refused a good reply"
        if outcomes[0] is not None or decoded is not None:
            return
        read.add(data, m.start, m.end)
    values = {d.digest() for d in digs}
    assert len(values) == 1
    (value,) = values
    if value is not None:
        check_digest(value)
    dev = read.device()
    assert dev == decoder.device()
    assert dev.digest is None or dev.digest == value


@target(500)
@given(wireguard_bytes)
def test_dump_digest(data: bytes) -> None:
    digest_messages(data)


@target(300)
@given(nl_device, st.sampled_from([512, 700, 4096]), st.sampled_from([512, 700, 4096]), edits)
def test_equal_dump_digest_means_the_same_device(
    dev: Device, size: int, other: int, ops: list[tuple[int, int, int, bytes]]
) -> None:
    read = nlwire.ReadDecoder()
    dump = encode_device_dump(FAMILY, dev, seq=SEQ, max_message=size)
    for m in nlwire.iter_messages(dump):
        if m.type == FAMILY:
            read.add(dump, m.start, m.end)
    recorded = read.device()
    assert recorded == dev and recorded.digest is not None
    changed = nl_mutate(encode_device_dump(FAMILY, dev, seq=SEQ, max_message=other), ops)
    digest = nlwire.DigestDecoder()

    def digest_all() -> int | None:
        # The replies a read takes, by decode_device's (and the conversation's) rules:
        # this dump's sequence number, up to NLMSG_DONE. A reply of another dump, which
        # the mutation may make of one, is no part of this one's digest either.
        for m in nlwire.iter_messages(changed):
            if m.seq != SEQ:
                continue
            if m.type == nlwire.NLMSG_DONE:
                break
            if m.type == nlwire.NLMSG_ERROR or m.flags & nlwire.NLM_F_DUMP_INTR:
                raise nlwire.DecodeError("not a whole dump")
            digest.add(changed, m.start, m.end)
        return digest.digest()

    value = ended_well(digest_all, nlwire.DecodeError)
    if value != recorded.digest:
        return
    decoded = ended_well(lambda: nlwire.decode_device(changed, seq=SEQ), nlwire.DecodeError)
    if not isinstance(decoded, nlwire.DecodeError):
        assert decoded == dev, "an equal digest hid a change"
