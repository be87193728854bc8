"""The reference status collector and public status page (docs/collector.md).

``verify`` checks signed pushes; ``document`` checks their bodies; ``fleet``
holds each server's newest figure; ``store`` the SQLite history; ``page``,
``apis`` and ``app`` serve them; ``promsource`` reads figures from Prometheus
instead; ``service`` runs it all; ``config`` reads its file.
"""

from __future__ import annotations

from nodeagent.central.collector.verify import Refused, ReplayGuard, verify_push

__all__ = ["Refused", "ReplayGuard", "verify_push"]
