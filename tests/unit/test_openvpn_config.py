"""The ``openvpn`` section: management address (unix or loopback TCP), password file, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.config.agent import ConfigError, load_config


def config(tmp_path: Path, entry: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "node: {name: n1}\n"
        f"feed: {{path: {tmp_path}/feed.json}}\n"
        "openvpn:\n  instances:\n"
        f"    - {entry}\n"
    )
    return path


def pw(tmp_path: Path, mode: int) -> Path:
    p = tmp_path / "mgmt.pw"
    p.write_text("s3cret-pass\n")
    p.chmod(mode)
    return p


def test_instance_with_password_file(tmp_path: Path) -> None:
    p = pw(tmp_path, 0o600)
    c = load_config(
        config(tmp_path, f"{{management: /run/o.sock, interface: tun0, password_file: {p}}}")
    )
    (inst,) = c.openvpn
    assert (inst.management, inst.interface, inst.password_file) == ("/run/o.sock", "tun0", str(p))
    c = load_config(config(tmp_path, "{management: '127.0.0.1:7505', interface: tun0}"))
    assert c.openvpn[0].password_file is None
    assert load_config(config(tmp_path, "{management: '[::1]:7505', interface: tun0}")).openvpn


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{management: '192.0.2.1:7505', interface: tun0}", "is not on a loopback address"),
        ("{management: 'vpn.example.net:7505', interface: tun0}", "is not on a loopback address"),
        ("{management: 'run/o.sock', interface: tun0}", "must be an absolute path"),
        ("{management: '127.0.0.1', interface: tun0}", "needs a port"),
        ("{management: /run/o.sock, interface: tun0, password_file: PW}", "chmod 600"),
        ("{management: /run/o.sock, interface: tun0, pasword_file: x}", "unknown key"),
    ],
)
def test_problems_name_file_line_and_key(tmp_path: Path, entry: str, message: str) -> None:
    p = pw(tmp_path, 0o640)
    path = config(tmp_path, entry.replace("PW", str(p)))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    (problem,) = e.value.problems
    text = str(problem)
    assert text.startswith(f"{path}:5: openvpn.instances[0].")
    assert message in text
    assert "s3cret" not in text
