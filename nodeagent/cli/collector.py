"""``nodeagent collector -c FILE``: the reference status collector and public status page.

Exit codes as the agent's: 0 after SIGTERM or SIGINT, 1 on a runtime
failure (a listener that cannot bind, a database that cannot open), 78 for
a configuration error. SIGHUP reads the file and the secret files again; a
bad new configuration keeps the old one running.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from nodeagent.central.collector.config import (
    CollectorConfig,
    ConfigError,
    Problem,
    load_collector_config,
    read_secrets,
)
from nodeagent.privacy.logs import loop_exception_handler, protect_process, setup_logging

log = logging.getLogger(__name__)

EX_OK, EX_FAILURE, EX_CONFIG = 0, 1, 78


def _read(path: str) -> tuple[CollectorConfig, dict[str, bytes]]:
    """The configuration and its secrets; ConfigError for either."""
    config = load_collector_config(path)
    try:
        return config, read_secrets(config)
    except (OSError, ValueError) as e:
        # Between the check and this read a secret file changed: the same error.
        message = getattr(e, "strerror", None) or str(e)
        raise ConfigError([_problem(path, message)]) from None


def _problem(path: str, message: str) -> Problem:
    return Problem(path, None, "nodes", message)


def main_collector(path: str, *, check_only: bool = False) -> int:
    try:
        config, secrets = _read(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EX_CONFIG
    if check_only:
        print(f"{path}: ok")
        return EX_OK
    # Whatever the process or a library writes passes the agent's privacy rules.
    protect_process()
    setup_logging(config.log.level, config.log.format)
    try:
        asyncio.run(_serve(path, config, secrets))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # the collector's last word, then an exit code
        log.error("collector_failed error=%s", type(e).__name__)
        return EX_FAILURE
    return EX_OK


async def _serve(path: str, config: CollectorConfig, secrets: dict[str, bytes]) -> None:
    from nodeagent.central.collector.service import Collector

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    stop = asyncio.Event()
    collector = Collector(config, secrets)

    def reload() -> None:
        try:
            new, new_secrets = _read(path)
        except ConfigError as e:
            log.warning("config_reload refused problems=%d", len(e.problems))
            for problem in e.problems:
                log.warning("config_problem %s", problem)
            return
        if new.log != collector.config.log:
            setup_logging(new.log.level, new.log.format)
        collector.reload(new, new_secrets)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    async with collector:
        log.info("collector started nodes=%d source=%s", len(config.nodes), config.source)
        await stop.wait()
    log.info("collector stopped")
