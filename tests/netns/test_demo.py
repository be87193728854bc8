"""`make demo` keeps working: the whole system runs end to end in its namespaces."""

from __future__ import annotations

import pytest

from nodeagent.lab.demo import run_demo


def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(seconds=4) == 0
    out = capsys.readouterr().out
    assert "ping ok" in out and "no answer, as it should be" in out
    assert "status   ok" in out
