"""The agent installed as the README says, under a real systemd (PID 1) with the real module.

One VM run (``tests/system/vm.py``) per session: a cached Debian image boots
with this work tree injected, and ``guest-checks.sh`` runs the checks there
(``make install``, ``check-config``, ``enable --now`` reaching READY=1, the
feed's peers in the kernel, reload, the watchdog restarting a hung agent,
``stop`` keeping the peers, the sandbox, a journal free of client values).
Each check is one test here, failing with the guest's own message; a check
the guest never reached fails with the tail of the VM's console. Missing
prerequisites fail the tier: it never skips.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.system import image
from tests.system.vm import Run, run_tier

# (check, what it shows), in the order the guest runs them.
CHECKS = [
    ("install", "make install (PIP_INSTALL_ARGS from local wheels) lays out the README's install"),
    ("check-config", "a kernel interface with create: true and a file feed passes check-config"),
    ("start", "systemctl enable --now: active (running) via READY=1, no restart"),
    ("peers", "the kernel interface holds exactly the feed's peers and allowed IPs"),
    ("reload", "a changed feed and systemctl reload: the kernel follows, same process"),
    ("sandbox", "only CAP_NET_ADMIN, user nodeagent, / read-only, no write outside the unit's"),
    ("userspace", "with the README's drop-in the agent syncs wireguard-go, also after its restart"),
    ("watchdog", "SIGSTOP: the watchdog kills and restarts the agent"),
    ("stop", "systemctl stop leaves every peer in the kernel"),
    ("journal", "the journal holds the agent's lines and no key or client address"),
]

TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "git")


@pytest.fixture(scope="module")
def system_run(request: pytest.FixtureRequest) -> Iterator[Run]:
    if os.geteuid() != 0:
        pytest.fail("system tier cannot run: not root (debootstrap, the image cache)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"system tier cannot run: {', '.join(missing)} missing (make test-system)")
    try:
        image.newest_kernel()
    except RuntimeError as e:
        pytest.fail(f"system tier cannot run: {e}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def progress(line: str) -> None:
        """Live on the terminal, past pytest's capture: the run takes minutes."""
        if capture is None:
            print(line, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    progress("")
    progress("system: booting the Debian/systemd VM (a few minutes; a fresh cache adds ~2)")
    run = run_tier(progress=progress)
    progress(f"system: {run.ended}; guest finished: {run.done}; timings:\n{run.timing_table()}")
    yield run


def test_vm_ran_every_check(system_run: Run) -> None:
    assert system_run.done and system_run.ended == "qemu exit 0", (
        f"the guest did not finish its checks ({system_run.ended}); "
        f"console tail:\n{system_run.console_tail()}"
    )


@pytest.mark.parametrize(("check", "what"), CHECKS, ids=[name for name, _ in CHECKS])
def test_check(system_run: Run, check: str, what: str) -> None:
    result = system_run.checks.get(check)
    assert result is not None, (
        f"{check} ({what}): the guest never reported it ({system_run.ended}); "
        f"console tail:\n{system_run.console_tail()}"
    )
    assert result.passed, (
        f"{check} ({what}): {result.message}\n"
        f"guest console while it ran:\n{system_run.console_of(check)}"
    )
