"""``nodeagent audit [-c FILE] [--root DIR]``: print each finding with its fix; exit 1 if any."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from nodeagent.privacy.audit import DEFAULT_CONFIG, audit
from nodeagent.privacy.audit_report import report_lines

EX_OK, EX_FINDINGS, EX_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit's options, for the main CLI's subparser."""
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the agent's configuration (default {DEFAULT_CONFIG})")  # fmt: skip
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="audit the host tree mounted at DIR (default /)")  # fmt: skip


def run(config: str, root: str, out: TextIO | None = None) -> int:
    """Audit, print, and return the exit code."""
    out = out or sys.stdout
    findings = audit(root, config)
    for line in report_lines(findings):
        print(line, file=out)
    return EX_FINDINGS if findings else EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodeagent audit", description=__doc__)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code not in (0, None) else EX_OK
    return run(args.config, args.root)


if __name__ == "__main__":
    sys.exit(main())
