"""Total server load: interface byte counters and CPU in, one coarsened figure out.

``counters`` reads the kernel (rtnetlink) and ``cpu`` reads psutil; ``meter``
is pure and turns their samples into the ``LoadReport`` that ``/status`` and
the push publish. Nothing here ever reads anything per peer.
"""

from __future__ import annotations

from nodeagent.load.meter import LoadReport, Meter, MeterConfig, Sample

__all__ = ["LoadReport", "Meter", "MeterConfig", "Sample"]
