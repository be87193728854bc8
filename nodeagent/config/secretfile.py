"""Secrets kept in files: tokens, HMAC secrets, TLS keys, WireGuard private keys.

Secrets are never written inline in the configuration, only as paths to files,
and a file that group or others may access is refused, as ``wg`` refuses one.
No message raised here ever contains a secret file's content.
"""

from __future__ import annotations

import os
import stat

from nodeagent.core.model import parse_key

__all__ = ["MAX_SECRET_BYTES", "read_private_key", "read_secret"]

MAX_SECRET_BYTES = 64 << 10


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The content of a secret file, trailing whitespace stripped.

    Refuses, like ``wg``, a file that group or others may access. Raises
    ``OSError`` if it cannot be opened and ``ValueError`` otherwise; no message
    ever contains the file's content.
    """
    # O_NONBLOCK: a FIFO put where a secret should be must not hang the agent.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        # fstat on the open file, not stat on the name: no window to swap the file.
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{os.fspath(path)} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ValueError(
                f"{os.fspath(path)} is accessible by group or others (mode {mode:04o}); "
                f"run chmod 600 {os.fspath(path)}"
            )
        data = f.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"{os.fspath(path)} is larger than {MAX_SECRET_BYTES} bytes")
    secret = data.rstrip()
    if not secret:
        raise ValueError(f"{os.fspath(path)} is empty")
    return secret


def read_private_key(path: str | os.PathLike[str]) -> bytes:
    """The 32 raw bytes of a WireGuard private key file (base64, as ``wg genkey`` writes it)."""
    text = read_secret(path)
    try:
        return parse_key(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        # "from None": the decoding error would quote the bytes it choked on.
        raise ValueError(
            f"{os.fspath(path)} does not hold a WireGuard private key "
            "(base64 of 32 bytes, as wg genkey writes it)"
        ) from None
