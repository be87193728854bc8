"""The demo's files pass the real loaders: agent and collector configurations, the feed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from nodeagent.central.collector.config import load_collector_config
from nodeagent.config.agent import load_config
from nodeagent.feed.snapshot import parse_snapshot
from nodeagent.lab.configs import (
    Account,
    NodeFiles,
    Place,
    agent_config,
    collector_config,
    feed_accounts,
)
from nodeagent.lab.netns import missing_tools
from nodeagent.lab.openvpn import password_hash


def secret(path: Path) -> Path:
    path.write_text("s3cret-of-the-test\n")
    path.chmod(0o600)
    return path


def nodes(tmp: Path) -> list[NodeFiles]:
    wg = NodeFiles("nl-ams-01", tmp / "a", wg_interface="ndwabcd1234", load_interfaces=["cust0"])
    ovpn = NodeFiles("se-sto-01", tmp / "b", openvpn_tun="tun-ovpn",
                     load_interfaces=["cust0", "cust1"])  # fmt: skip
    for n in (wg, ovpn):
        n.dir.mkdir()
        secret(n.secret)
    secret(ovpn.dir / "mgmt.pw")
    return [wg, ovpn]


def test_agent_configs_load(tmp_path: Path) -> None:
    token = secret(tmp_path / "feed.token")
    wg, ovpn = nodes(tmp_path)
    for node in (wg, ovpn):
        node.config.write_text(
            agent_config(node, hub="10.213.7.1", feed_port=8700, page_port=8600, token=token)
        )
    a, b = load_config(wg.config), load_config(ovpn.config)
    assert [i.name for i in a.wireguard.interfaces] == ["ndwabcd1234"] and not a.openvpn
    assert not b.wireguard.interfaces and len(b.openvpn) == 1
    assert b.load is not None and b.load.interfaces == ("cust0", "cust1")
    assert a.push is not None and a.push.url == "http://10.213.7.1:8600/api/v1/push"


def test_collector_config_loads(tmp_path: Path) -> None:
    text = collector_config(
        [(n, Place("Amsterdam", "Netherlands", "nl")) for n in nodes(tmp_path)],
        listen=["127.0.0.1:8600", "10.213.7.1:8600"],
        database=tmp_path / "history.sqlite",
    )
    (tmp_path / "collector.yaml").write_text(text)
    config = load_collector_config(tmp_path / "collector.yaml")
    assert [n.name for n in config.nodes] == ["nl-ams-01", "se-sto-01"]


def test_feed_accounts_are_a_valid_feed() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    accounts = [
        Account("nl-ams-01", public_key=bytes(range(32)), tunnel_ip="10.100.1.10", expires_at=when),
        Account("nl-ams-01", public_key=bytes(32), tunnel_ip="10.100.1.11", listed=False),
        Account("se-sto-01", username="demo-0011aabb", password_hash=password_hash("pw", n=16)),
    ]
    text = feed_accounts({"nl-ams-01": "ndwabcd1234", "de-fra-01": "ndw00000000"}, accounts)
    doc = json.loads(text)
    assert doc["wireguard"]["ndw00000000"] == {"peers": []}
    assert doc["wireguard"]["ndwabcd1234"]["peers"][0]["expires_at"] == "2030-01-02T03:04:05Z"
    desired = parse_snapshot(json.dumps({"version": "v1", **doc}))
    assert len(desired.wireguard["ndwabcd1234"].peers) == 1
    assert list(desired.users) == ["demo-0011aabb"]


def test_missing_tools_name_their_debian_package() -> None:
    assert missing_tools(["sh"]) == []
    assert missing_tools(["no-such-tool-4711"]) == [
        "no-such-tool-4711 (Debian package no-such-tool-4711)"
    ]
