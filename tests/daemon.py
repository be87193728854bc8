"""The real daemon in tests: a free port, a configuration it runs degraded with, the process."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nodeagent.lab.netns import unique_name
from tests.peerdata import feed_document, make_peers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def degraded_config(tmp_path: Path, prefix: str, more: str = "") -> tuple[Path, str]:
    """``c.yaml`` in ``tmp_path`` and its interface: a file feed of three peers for a
    userspace interface whose socket does not exist (the agent keeps running,
    degraded), then ``more``."""
    iface = unique_name(prefix)
    (tmp_path / "feed.json").write_text(feed_document(make_peers(3), iface))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"node: {{name: nl-test-01}}\n"
        f"wireguard:\n  interfaces:\n    - {{name: {iface}, backend: userspace, "
        f"uapi_socket: {tmp_path}/missing.sock}}\n"
        f"feed: {{path: {tmp_path}/feed.json}}\n" + more
    )
    return cfg, iface


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    stderr: str = ""  # everything it wrote there, once it has stopped


@contextmanager
def running_daemon(cfg: Path) -> Iterator[Daemon]:
    """``nodeagent run -c cfg``, stopped with SIGTERM on the way out (its stderr kept)."""
    daemon = Daemon(
        subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "run", "-c", str(cfg)],
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    try:
        yield daemon
    finally:
        daemon.process.terminate()
        _, daemon.stderr = daemon.process.communicate(timeout=30)
