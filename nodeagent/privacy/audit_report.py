"""The audit's report: a :class:`Finding` and the text ``nodeagent audit`` prints.

A finding names the file or setting, says what it records and how to fix it.
It never quotes file contents, so the report cannot carry an address or a name
the audit read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Finding", "report_lines"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One way the host breaks the promise: where, what it records, how to fix it."""

    code: str
    where: str
    what: str
    fix: str

    def render(self) -> str:
        return f"{self.code}: {self.where}: {self.what}\n    fix: {self.fix}"


def report_lines(findings: Sequence[Finding]) -> Iterator[str]:
    """Each finding with its fix, then the count (``audit: N finding(s)``)."""
    for f in findings:
        yield f.render()
    yield f"audit: {len(findings)} finding(s)"
