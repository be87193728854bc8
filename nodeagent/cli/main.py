"""Command line: the only place that turns errors into exit codes.

0 ok, 1 runtime failure, 2 usage, 78 configuration error (EX_CONFIG).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodeagent import __version__
from nodeagent.cli import audit as audit_cli
from nodeagent.cli.status import DEFAULT_URL, main_status
from nodeagent.config.agent import Config, ConfigError, LogConfig, load_config
from nodeagent.privacy.logs import loop_exception_handler, protect_process, redact, setup_logging

if TYPE_CHECKING:
    from nodeagent.core.sync import SyncOutcome

EX_OK, EX_FAILURE, EX_USAGE, EX_CONFIG = 0, 1, 2, 78

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeagent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nodeagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("-c", "--config", required=True, metavar="FILE")
    sync = sub.add_parser("sync", help="reconcile every interface from the feed")
    sync.add_argument("-c", "--config", required=True, metavar="FILE")
    sync.add_argument("--once", action="store_true", required=True, help="one pass, then exit")
    status = sub.add_parser("status", help="show a running agent's /status")
    status.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    status.add_argument("--token-file", metavar="FILE", help="bearer token for the endpoint")
    lab = sub.add_parser("lab", help="run the whole system in network namespaces on this machine")
    lab.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: Ctrl+C)"
    )
    lab.add_argument(
        "--port", type=int, default=8600, help="the status page's port on 127.0.0.1 (default 8600)"
    )
    collector = sub.add_parser("collector", help="run the status collector and public page")
    collector.add_argument("-c", "--config", required=True, metavar="FILE")
    collector.add_argument("--check", action="store_true", help="validate the file, then exit")
    audit = sub.add_parser("audit", help="check this host against the no-logs promise")
    audit_cli.add_arguments(audit)
    return parser


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code not in (0, None) else EX_OK
    if args.command == "status":
        return main_status(args.url, args.token_file)
    if args.command == "lab":
        from nodeagent.lab.demo import run_demo

        return run_demo(args.duration, args.port)
    if args.command == "collector":
        from nodeagent.cli.collector import main_collector

        return main_collector(args.config, check_only=args.check)
    if args.command == "audit":
        # Before loading the config: the audit must also run without a valid one.
        return audit_cli.run(args.config, args.root)
    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: ok")
        return EX_OK
    # The daemon and the one-shot sync: whatever the process or a library writes
    # passes the same privacy rules as the agent's own log lines.
    protect_process()
    setup_logging(config.log.level, config.log.format)
    if args.command == "sync":
        return _sync_once(config)
    return _run(config)


def _sync_once(config: Config) -> int:
    from nodeagent.daemon.agent import SyncFailed, sync_once
    from nodeagent.feed.snapshot import FeedError
    from nodeagent.wireguard import BackendError

    try:
        outcomes = sync_once(config)
    except SyncFailed as e:
        _print_outcomes(e.outcomes)
        for name, reason in e.failures.items():
            # Backend reasons name interfaces, operations and errnos, never keys or addresses.
            print(f"nodeagent: sync failed: {name}: {reason}", file=sys.stderr)
        return EX_FAILURE
    except (FeedError, BackendError, OSError) as e:
        # These messages name positions, interfaces and counts, never keys or addresses.
        print(f"nodeagent: sync failed: {redact(str(e))}", file=sys.stderr)
        return EX_FAILURE
    _print_outcomes(outcomes)
    return EX_OK


def _print_outcomes(outcomes: list[SyncOutcome]) -> None:
    for o in outcomes:
        held = ""
        if o.held_removals:
            held += f" held_removals={o.held_removals} (feed.max_removal_ratio)"
        if o.held_additions:
            held += f" held_additions={o.held_additions} (peer limit)"
        print(
            f"{o.interface}: added={o.added} updated={o.updated} removed={o.removed} "
            f"unchanged={o.unchanged}{held}"
        )


def _run(config: Config) -> int:
    from nodeagent.daemon.httpprocess import HttpProcess
    from nodeagent.daemon.memory import tune_malloc

    def configure_logging(c: LogConfig) -> None:
        setup_logging(c.level, c.format)

    # The endpoints get a process of their own (see httpprocess): forked now, while
    # no event loop or thread exists, so that a reconcile pass never delays a request.
    # Without an http section there is nothing to serve; one a reload adds is served here.
    http_process = None
    if config.http is not None:
        http_process = HttpProcess.fork(loop_exception_handler, configure_logging)
    tune_malloc()  # the agent's: the serving process sets its own (memory.SERVING_THRESHOLD)
    # The agent's own modules come after the fork: pages that only the agent uses are
    # its alone, and its writes to them copy nothing the serving process holds.
    from nodeagent.daemon.agent import Agent

    agent = Agent(config, configure_logging=configure_logging, http_process=http_process)

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
        try:
            await agent.run()
        finally:
            if http_process is not None:
                await http_process.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except Exception as e:  # the daemon's last word, then an exit code
        log.error("agent_failed error=%s", type(e).__name__)
        return EX_FAILURE
    return EX_FAILURE if agent.failed else EX_OK
