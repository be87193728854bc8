"""Run a command inside a throw-away VM with a real kernel that has the WireGuard module.

    python -m tests.kernel.vm [--memory 2G] [--kernel PATH] -- CMD...

Boots the newest ``/boot/vmlinuz-*`` with virtme-ng (``vng``; KVM fails on
this host, so always ``--disable-kvm``), with the host's file system visible
and the current directory kept. Inside, it loads ``wireguard`` and runs CMD;
a leading ``python``/``python3`` is replaced by this interpreter, because the
guest's PATH finds Debian's Python without our packages. The exit code of CMD
is written to a shared directory and read back, so it does not depend on vng
passing it through. Exit codes: CMD's own; 97 if the module did not load; 98
if the VM did not run the command at all.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from typing import IO, TextIO

MODULE_FAILED = 97
VM_FAILED = 98
# Set inside the guest: what is left there is gone when the VM powers off.
THROWAWAY_ENV = "NODEAGENT_THROWAWAY_VM"


def in_throwaway_vm() -> bool:
    """True inside a VM booted by this module."""
    return os.environ.get(THROWAWAY_ENV) == "1"


def newest_kernel() -> str:
    """The newest installed Debian kernel image."""

    def version(path: str) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", os.path.basename(path))]

    found = sorted(glob.glob("/boot/vmlinuz-*"), key=version)
    if not found:
        raise SystemExit("vm: no /boot/vmlinuz-* (apt-get install linux-image-amd64)")
    return found[-1]


def guest_script(cmd: list[str], rc_file: str) -> str:
    """The shell line the guest runs."""
    if cmd and os.path.basename(cmd[0]) in ("python", "python3"):
        cmd = [sys.executable, *cmd[1:]]
    cwd = os.getcwd()
    env = f"PYTHONPATH={shlex.quote(cwd)}" + (
        f":{shlex.quote(os.environ['PYTHONPATH'])}" if os.environ.get("PYTHONPATH") else ""
    )
    return (
        f"cd {shlex.quote(cwd)} || exit {VM_FAILED}; "
        f"if ! modprobe wireguard; then echo vm: modprobe wireguard failed >&2; "
        f"echo {MODULE_FAILED} > {shlex.quote(rc_file)}; exit {MODULE_FAILED}; fi; "
        f"env {env} PYTHONDONTWRITEBYTECODE=1 {THROWAWAY_ENV}=1 {shlex.join(cmd)}; "
        f"echo $? > {shlex.quote(rc_file)}"
    )


def _pump(source: IO[bytes] | None, sink: TextIO) -> None:
    """Copy the VM's output to ours as it comes."""
    assert source is not None
    sink.flush()
    fd = source.fileno()
    for chunk in iter(lambda: os.read(fd, 65536), b""):
        sink.buffer.write(chunk)
        sink.buffer.flush()


def run(cmd: list[str], *, memory: str = "2G", kernel: str | None = None) -> int:
    """Boot the VM, run ``cmd`` inside it, and return its exit code."""
    kernel = kernel or newest_kernel()
    with tempfile.TemporaryDirectory(prefix="nodeagent-vm-") as shared:
        rc_file = os.path.join(shared, "rc")
        argv = [
            "vng",
            "-r",
            kernel,
            "--disable-kvm",
            "--memory",
            memory,
            "--rwdir",
            shared,
            "--exec",
            guest_script(cmd, rc_file),
        ]
        try:
            # Through pipes: qemu reopens its /proc/self/fd/1 and /2, which
            # truncates them when they are files (`make test > log` lost all
            # output before the VM's).
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            print("vm: vng not found (pip install virtme-ng)", file=sys.stderr)
            return VM_FAILED
        pumps = [
            threading.Thread(target=_pump, args=(source, sink), daemon=True)
            for source, sink in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))
        ]
        for pump in pumps:
            pump.start()
        proc.wait()
        for pump in pumps:
            pump.join()
        try:
            with open(rc_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            print(
                f"vm: the VM did not run the command (vng exit {proc.returncode})", file=sys.stderr
            )
            return VM_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kernel.vm", description=__doc__)
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--kernel", default=None, help="kernel image (default: newest in /boot)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD...")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    return run(cmd, memory=args.memory, kernel=args.kernel)


if __name__ == "__main__":
    sys.exit(main())
