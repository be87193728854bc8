"""The status collector side: verification of signed pushes (the collector itself comes later)."""

from __future__ import annotations

from nodeagent.central.collector.verify import Refused, ReplayGuard, verify_push

__all__ = ["Refused", "ReplayGuard", "verify_push"]
