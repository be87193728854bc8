"""OpenVPN 2.6 for the lab: certificates, the server's configuration, a client's command line.

The server runs as docs/openvpn.md says (management on a unix socket with a
password file, ``management-client-auth``, ``username-as-common-name``,
``management-hold``, no client certificates); clients log in with
``--auth-user-pass``. Used by the demo and by tests/netns/test_openvpn.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

SERVER_CONF = """\
dev {tun}
dev-type tun
proto udp
port 1194
topology subnet
server {subnet} 255.255.255.0
ca {d}/ca.crt
cert {d}/server.crt
key {d}/server.key
dh none
verify-client-cert none
username-as-common-name
management {d}/mgmt.sock unix {d}/mgmt.pw
management-client-auth
management-hold
keepalive 2 10
hand-window 60
reneg-sec 0
explicit-exit-notify 1
disable-dco
verb 1
mute-replay-warnings
data-ciphers AES-256-GCM:AES-128-GCM
"""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    """A throw-away CA and a server certificate in ``d`` (ca.crt, server.crt, server.key)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=nodeagent-test-ca", cwd=d)  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server", cwd=d)
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\n"
        "extendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
            cwd=d)  # fmt: skip


def write_secret(path: Path, text: str) -> Path:
    """A file only its owner may read (as OpenVPN, wg and the agent want secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def server_files(d: Path, tun: str, subnet: str, management_password: str) -> Path:
    """Certificates, the management password file and server.conf in ``d``; returns the conf."""
    make_pki(d)
    write_secret(d / "mgmt.pw", management_password + "\n")
    conf = d / "server.conf"
    conf.write_text(SERVER_CONF.format(tun=tun, d=d, subnet=subnet))
    return conf


def client_argv(
    server_ip: str, ca: Path, credentials: Path, *, verb: int = 3, auth_retry: str = "none"
) -> list[str]:
    """An OpenVPN client logging in with the username and password in ``credentials``.

    ``auth_retry`` none: a refused login ends the client; nointeract: it tries again.
    """
    return [
        "openvpn", "--client", "--dev", "tun0", "--dev-type", "tun", "--proto", "udp",
        "--remote", server_ip, "1194", "--nobind", "--ca", str(ca),
        "--auth-user-pass", str(credentials), "--auth-retry", auth_retry,
        "--connect-retry", "1", "1",
        "--disable-dco", "--verb", str(verb), "--data-ciphers", "AES-256-GCM:AES-128-GCM",
    ]  # fmt: skip


def password_hash(password: str, n: int = 16384, r: int = 8, salt: bytes | None = None) -> str:
    """The feed's ``scrypt$N$r$p$<salt>$<hash>`` (docs/openvpn.md); N=16384 r=8 by default."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=1, dklen=32)
    return f"scrypt${n}${r}$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
