"""The command line: exit codes and messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.cli.main import EX_CONFIG, EX_OK, EX_USAGE, main


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"node: {{name: a}}\nfeed: {{path: {tmp_path}/feed.json}}\n")
    assert main(["check-config", "-c", str(cfg)]) == EX_OK
    assert capsys.readouterr().out.strip() == f"{cfg}: ok"


def test_check_config_reports_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"node:\n  name: a\nfeed:\n  path: {tmp_path}/feed.json\n  long_poll: 30\n"
        "wireguard:\n  interfaces:\n    - name: wg0\n      backend: kernal\n"
    )
    assert main(["check-config", "-c", str(cfg)]) == EX_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{cfg}:5: feed.long_poll: ")
    assert err[1].startswith(f"{cfg}:9: wireguard.interfaces[0].backend: ")


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    assert main(["check-config", "-c", str(tmp_path / "nope.yaml")]) == EX_CONFIG


def test_usage_errors_exit_2() -> None:
    assert main([]) == EX_USAGE
    assert main(["frobnicate"]) == EX_USAGE
    assert main(["sync", "-c", "x"]) == EX_USAGE  # --once is required


def test_sync_once_with_bad_feed_fails_without_quoting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    feed = tmp_path / "feed.json"
    feed.write_text(
        '{"version": "1", "full": true, "wireguard": {"wg9": {"peers": '
        '[{"public_key": "not-a-key", "allowed_ips": ["10.1.2.3/32"]}]}}}'
    )
    cfg.write_text(
        f"node: {{name: a}}\nfeed: {{path: {feed}}}\n"
        "wireguard:\n  interfaces:\n    - {name: wg9, backend: userspace, "
        f"uapi_socket: {tmp_path}/none.sock}}\n"
    )
    assert main(["sync", "--once", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "wireguard.wg9.peers[0].public_key" in err
    assert "not-a-key" not in err and "10.1.2.3" not in err
