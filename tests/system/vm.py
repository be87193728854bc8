"""The system tier's VM run: one boot of the cached image with this work tree injected.

Per run, under a temp dir: a copy-on-write overlay of the base image
(``qemu-img create -f qcow2 -b base.ext4``), and a small ext4 disk
(``mkfs.ext4 -d``, label ``nodeagent-in``) holding a copy of the work tree
(tracked and untracked-but-not-ignored files), wheels of the project and of
every dependency built on the host (the VM has no network), and the guest's
check script. The base image's runner unit mounts that disk and runs the
script; qemu exits when the guest powers off.

The guest reports on its second serial port (``RESULT``/``TIME``/``DONE``
lines), free of kernel and systemd output; its console (first serial port)
goes to a log whose tail explains a failure. qemu is killed past a hard
timeout (``NODEAGENT_SYSTEM_TIMEOUT``, default 900 s) and on any exit of
this process, even SIGKILL (PR_SET_PDEATHSIG).

    python -m tests.system.vm [--keep DIR]   # one run, results on stdout
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.system import image

REPO = Path(__file__).resolve().parents[2]
CHECKS = Path(__file__).with_name(image.CHECKS_SCRIPT)
TIMEOUT_S = float(os.environ.get("NODEAGENT_SYSTEM_TIMEOUT", "900"))
MEMORY = "2G"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Check:
    name: str
    passed: bool
    message: str


@dataclass
class Run:
    """What one VM run reported."""

    checks: dict[str, Check] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    done: bool = False
    ended: str = "not started"
    console: str = ""

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-lines:])

    def console_of(self, check: str, lines: int = 60) -> str:
        """The console between the previous check's RESULT line and this one's: what
        the guest printed while running it (its diagnostics on failure)."""
        text = self.console.splitlines()
        end = next((i for i, t in enumerate(text) if t.startswith(f"RESULT {check} ")), None)
        if end is None:
            return self.console_tail(lines)
        start = max((i + 1 for i, t in enumerate(text[:end]) if t.startswith("RESULT ")), default=0)
        return "\n".join(text[start:end][-lines:])

    def timing_table(self) -> str:
        return "\n".join(f"  {name:<12} {seconds:7.1f} s" for name, seconds in self.timings)


def parse_report(text: str, run: Run) -> None:
    """Fill ``run`` from the guest's ttyS1 lines."""
    for raw in text.splitlines():
        line = raw.strip("\r\x00 ")
        parts = line.split(" ", 3)
        if parts[0] == "RESULT" and len(parts) >= 3:
            message = parts[3] if len(parts) > 3 else ""
            run.checks[parts[1]] = Check(parts[1], parts[2] == "PASS", message)
        elif parts[0] == "TIME" and len(parts) == 3:
            with contextlib.suppress(ValueError):
                run.timings.append((f"guest {parts[1]}", float(parts[2])))
        elif line == "DONE":
            run.done = True


def copy_tree(dest: Path) -> None:
    """The work tree as git sees it (tracked and untracked, not ignored), without .git;
    outside a git checkout, the tree without .git, caches and build output."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
    )
    if listing.returncode != 0:
        skip = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", ".*_cache")
        shutil.copytree(REPO, dest, symlinks=True, ignore=skip)
        return
    for name in sorted(set(listing.stdout.decode().split("\0")) - {""}):
        src = REPO / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def build_wheels(tree: Path, dest: Path, scratch: Path) -> None:
    """Wheels of the project and every dependency, and of setuptools for its build."""
    build = scratch / "wheel-build"
    shutil.copytree(tree, build, symlinks=True)  # pip builds in the tree: not in ours
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--disable-pip-version-check",
            "-w",
            str(dest),
            str(build),
            "setuptools>=68",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    shutil.rmtree(build)


def make_inject_disk(payload: Path, disk: Path) -> None:
    """An ext4 image of ``payload``, labelled for the base image's fstab."""
    used = sum(f.stat().st_size for f in payload.rglob("*") if f.is_file())
    size = f"{used * 2 // 2**20 + 64}M"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", image.INJECT_LABEL, "-d", str(payload), str(disk), size],
        check=True,
        capture_output=True,
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL qemu when this process dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def boot(
    base: Path,
    inject: Path,
    workdir: Path,
    vmlinuz: str,
    run: Run,
    timeout: float = TIMEOUT_S,
    progress: Callable[[str], None] = print,
) -> None:
    """Boot the overlay of ``base`` with ``inject`` as the second disk; wait for power-off."""
    version = image.kernel_version(vmlinuz)
    overlay = workdir / "run.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay)],
        check=True,
        capture_output=True,
    )
    console = workdir / "console.log"
    report = workdir / "report.log"
    argv = [
        "qemu-system-x86_64",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        MEMORY,
        "-smp",
        "2",
        "-kernel",
        vmlinuz,
        "-initrd",
        f"/boot/initrd.img-{version}",
        "-append",
        "root=/dev/vda rw console=ttyS0 loglevel=4 panic=1",
        "-drive",
        f"file={overlay},format=qcow2,if=virtio",
        "-drive",
        f"file={inject},format=raw,if=virtio",
        "-serial",
        f"file:{console}",
        "-serial",
        f"file:{report}",
        "-nic",
        "none",
        "-no-reboot",
    ]
    seen = 0
    with (workdir / "qemu.log").open("wb") as qemu_log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=qemu_log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
                if report.exists():
                    lines = report.read_text(errors="replace").splitlines()
                    # Progress as it comes (pytest -s, or the standalone run).
                    for line in lines[seen:]:
                        if line.startswith(("RESULT", "TIME")):
                            progress(f"system: {line.strip()}")
                    seen = len(lines)
            if proc.poll() is None:
                run.ended = f"killed: still running after {timeout:.0f} s"
            else:
                run.ended = f"qemu exit {proc.returncode}"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if report.exists():
        parse_report(report.read_text(errors="replace"), run)
    if console.exists():
        text = ANSI.sub("", console.read_text(errors="replace").replace("\r", ""))
        run.console = "\n".join(line for line in text.splitlines() if line.strip())
    qemu_text = (workdir / "qemu.log").read_text(errors="replace").strip()
    if qemu_text:
        run.console += f"\n--- qemu's own output\n{qemu_text}"


def run_tier(keep: Path | None = None, progress: Callable[[str], None] = print) -> Run:
    """Build or find the base image, inject this tree, boot, and return what the guest said."""
    run = Run()
    vmlinuz = image.newest_kernel()
    t0 = time.monotonic()
    base, built = image.base_image(vmlinuz)
    run.timings.append(("image built" if built else "image cached", time.monotonic() - t0))
    with tempfile.TemporaryDirectory(prefix="nodeagent-system-") as tmp:
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        payload = workdir / "payload"
        t0 = time.monotonic()
        copy_tree(payload / "repo")
        build_wheels(payload / "repo", payload / "wheels", workdir)
        shutil.copy2(CHECKS, payload / image.CHECKS_SCRIPT)
        run.timings.append(("wheels+tree", time.monotonic() - t0))
        t0 = time.monotonic()
        inject = workdir / "inject.ext4"
        make_inject_disk(payload, inject)
        run.timings.append(("inject disk", time.monotonic() - t0))
        t0 = time.monotonic()
        boot(base, inject, workdir, vmlinuz, run, progress=progress)
        run.timings.append(("vm total", time.monotonic() - t0))
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.system.vm", description=__doc__)
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (logs, disks)")
    args = parser.parse_args(argv)
    run = run_tier(args.keep)
    print(run.console_tail(80))
    for check in run.checks.values():
        print(f"{'PASS' if check.passed else 'FAIL'} {check.name}: {check.message}")
    print(f"ended: {run.ended}; guest finished: {run.done}\n{run.timing_table()}")
    ok = run.done and all(c.passed for c in run.checks.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
