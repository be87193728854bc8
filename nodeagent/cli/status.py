"""``nodeagent status``: a human-readable view of a running agent's ``/status``.

Plain ``urllib``: a one-shot request needs no event loop. Returns an exit code
(0 ok, 1 the agent could not be asked or answered nonsense); turning it into
the process's exit is the CLI's job.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import IO, Any

from nodeagent.config.secretfile import read_secret

__all__ = ["DEFAULT_URL", "fetch_status", "main_status", "render"]

DEFAULT_URL = "http://127.0.0.1:9586/status"
TIMEOUT = 5.0


def _rate(bps: Any) -> str:
    if not isinstance(bps, int | float):
        return "unknown"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:g} bit/s"


def _pct(x: Any) -> str:
    return f"{x:g}%" if isinstance(x, int | float) else "unknown"


def render(doc: dict[str, Any]) -> str:
    """The status document as a few aligned lines."""
    load = doc.get("load") or {}
    status = str(doc.get("status", "unknown"))
    problems = doc.get("problems") or []
    if problems:
        status += " (" + ", ".join(str(p) for p in problems) + ")"
    window = load.get("window_seconds")
    rows = [
        ("node", str(doc.get("node", "?"))),
        ("status", status),
        (
            "load",
            f"{_pct(load.get('percent'))}  (link {_pct(load.get('link_percent'))}, "
            f"cpu {_pct(load.get('cpu_percent'))})",
        ),
        (
            "traffic",
            f"rx {_rate(load.get('rx_bps'))}, tx {_rate(load.get('tx_bps'))} "
            f"of {_rate(load.get('capacity_bps'))}"
            + (f", averaged over {window:g} s" if isinstance(window, int | float) else ""),
        ),
        ("agent", f"{doc.get('agent_version', '?')}, figures of {doc.get('generated_at', '?')}"),
    ]
    return "\n".join(f"{label:<8} {value}" for label, value in rows)


def fetch_status(url: str, token: bytes | None = None, timeout: float = TIMEOUT) -> dict[str, Any]:
    """GET and decode ``url``; raises OSError (incl. urllib errors) or ValueError."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if token is not None:
        request.add_header("Authorization", "Bearer " + token.decode("ascii", "replace"))
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
        data = resp.read(1 << 20)
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not a status document")
    return doc


def main_status(
    url: str | None = None, token_file: str | None = None, out: IO[str] | None = None
) -> int:
    """Print the agent's status; 0 when it answered (whatever its status), 1 otherwise."""
    out = out or sys.stdout
    url = url or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        print("nodeagent: status: --url must be an http:// or https:// URL", file=sys.stderr)
        return 1
    try:
        token = read_secret(token_file) if token_file else None
        doc = fetch_status(url, token)
    except urllib.error.HTTPError as e:
        hint = " (needs the token: --token-file)" if e.code == 401 else ""
        print(f"nodeagent: status: the agent answered HTTP {e.code}{hint}", file=sys.stderr)
        return 1
    except urllib.error.URLError as e:
        print(f"nodeagent: status: cannot reach the agent: {e.reason}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"nodeagent: status: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(render(doc), file=out)
    return 0
