"""Run one fuzz target under atheris (coverage-guided libFuzzer) instead of Hypothesis' own loop.

    python3 -m pip install -e '.[fuzz]'
    python3 -m tests.fuzz.atheris_run tests.fuzz.test_fuzz_netlink:test_attribute_trees \\
        -max_total_time=600

The target's strategies still build the inputs: atheris mutates the bytes
Hypothesis draws its choices from (``fuzz_one_input``), guided by the coverage
of the agent's code, which is instrumented. Arguments after the target go to
libFuzzer (``-max_total_time``, ``-runs``, a corpus directory...). Only targets
without pytest fixtures can run this way (not the HTTP ones). A failure is
saved in Hypothesis' example database, so the next ``make fuzz`` replays it.
"""

from __future__ import annotations

import importlib
import sys

import atheris


def main() -> None:
    if len(sys.argv) < 2 or ":" not in sys.argv[1]:
        sys.exit("usage: python3 -m tests.fuzz.atheris_run MODULE:TEST [libFuzzer options]")
    module, _, name = sys.argv[1].partition(":")
    with atheris.instrument_imports(include=["nodeagent"]):
        test = getattr(importlib.import_module(module), name)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], test.hypothesis.fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
