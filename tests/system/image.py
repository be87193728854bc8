"""The system tier's base image: Debian bookworm booting systemd as PID 1, built once, cached.

Holds everything that does not depend on the project's code: a minbase
debootstrap with systemd, udev, kmod, iproute2, wireguard-tools, python3-venv
and make (what ``make install`` needs), the host kernel's modules (so
``modprobe wireguard`` works under the host's ``/boot/vmlinuz``), a mount of
the per-run disk labelled ``nodeagent-in`` on ``/mnt/inject``, and a unit that
runs ``/mnt/inject/guest-checks.sh`` on boot, its output on ``ttyS0``, and
powers the machine off when the script ends. The image lives in
``/var/cache/nodeagent-tests/system/`` under a key hashed from every input
(package list, suite, mirror, kernel version, this file's text), so any change
here builds a new one; each run boots a copy-on-write overlay of it and never
writes the image itself.

    python -m tests.system.image    # build (or find) the image, print its path
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "wireguard-tools",
    "python3",
    "python3-venv",
    "make",
    "passwd",
    "util-linux",
    # Not procps: the units must not need /bin/kill (minbase has none; reload once
    # failed 203/EXEC there).
    "wireguard-go",
)
IMAGE_SIZE = "3G"
CACHE_DIR = Path(os.environ.get("NODEAGENT_SYSTEM_CACHE", "/var/cache/nodeagent-tests/system"))
INJECT_LABEL = "nodeagent-in"
INJECT_MOUNT = "/mnt/inject"
CHECKS_SCRIPT = "guest-checks.sh"
RUNNER_UNIT_NAME = "nodeagent-system-tier.service"

# Started once the base system is up; not ordered before multi-user.target, so
# the boot finishes while it runs (a unit the boot waits for cannot itself wait
# for `systemctl is-system-running --wait`). Whatever way the script ends, the
# machine powers off and qemu (-no-reboot) exits.
RUNNER_UNIT = f"""\
[Unit]
Description=nodeagent system tier: the checks the host injected
After=basic.target
RequiresMountsFor={INJECT_MOUNT}
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=simple
ExecStart=/bin/bash {INJECT_MOUNT}/{CHECKS_SCRIPT}
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
"""

FSTAB = f"""\
/dev/vda / ext4 rw,errors=remount-ro 0 0
LABEL={INJECT_LABEL} {INJECT_MOUNT} ext4 rw,x-systemd.device-timeout=60s 0 0
"""

# Nothing the checks do not need: no login prompts, no timers doing work in
# the background of a 30x slower machine.
MASKED = (
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "fstrim.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "systemd-timesyncd.service",
)


def kernel_version(vmlinuz: str) -> str:
    """``/boot/vmlinuz-6.1.0-57-amd64`` -> ``6.1.0-57-amd64``."""
    return os.path.basename(vmlinuz).removeprefix("vmlinuz-")


def cache_key(version: str) -> str:
    """A hash of everything the image is built from."""
    h = hashlib.sha256()
    for part in (SUITE, MIRROR, ",".join(PACKAGES), IMAGE_SIZE, version):
        h.update(part.encode() + b"\0")
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def _run(argv: list[str], log: Path) -> None:
    """Run a build step, its output to ``log``; fail with the log's tail."""
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        rc = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"image: {argv[0]} failed (exit {rc}); last lines of {log}:\n{tail}")


def _configure(root: Path, version: str) -> None:
    """What debootstrap leaves to us: modules, fstab, identity, the runner unit."""
    modules = Path("/lib/modules") / version
    if not (modules / "kernel/drivers/net/wireguard").is_dir():
        raise RuntimeError(f"image: {modules} has no wireguard module (linux-image-amd64?)")
    target = root / "lib/modules" / version
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(modules, target, symlinks=True)
    etc = root / "etc"
    (etc / "fstab").write_text(FSTAB)
    (etc / "hostname").write_text("nodeagent-system\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 nodeagent-system\n")
    # A machine id of its own: an empty one would make every boot a "first boot".
    (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
    (root / INJECT_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    units = etc / "systemd/system"
    (units / RUNNER_UNIT_NAME).write_text(RUNNER_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / RUNNER_UNIT_NAME).symlink_to(f"/etc/systemd/system/{RUNNER_UNIT_NAME}")
    for unit in MASKED:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # The journal stays in memory (/run), as on the provider's servers.
    shutil.rmtree(root / "var/log/journal", ignore_errors=True)


def remove_build_dir(work: Path) -> None:
    """Remove a build directory, first unmounting what an interrupted debootstrap left
    mounted in it (its /proc, /sys, /dev): rmtree must never walk into the host's."""
    prefix = str(work.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1].replace("\\040", " ") for line in f]
    for point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.call(["umount", "-l", point])
    with open("/proc/self/mounts") as f:
        if any(line.split()[1].startswith(prefix) for line in f):
            raise RuntimeError(f"image: {work} still has mounts; remove it by hand")
    shutil.rmtree(work, ignore_errors=True)


def build(image: Path, version: str) -> None:
    """debootstrap + configuration + mkfs.ext4 -d, into ``image`` (atomically)."""
    # Under the cache's lock: a build directory left here is from a builder that died.
    for stale in image.parent.glob("build-*"):
        remove_build_dir(stale)
    work = image.parent / f"build-{image.stem}-{os.getpid()}"
    work.mkdir(parents=True)
    log = work / "build.log"
    root = work / "root"
    try:
        print(f"image: building {image} (debootstrap {SUITE}, log {log})", flush=True)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                MIRROR,
            ],
            log,
        )
        _configure(root, version)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        tmp = work / "base.ext4"
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "nodeagent-root",
                "-d",
                str(root),
                str(tmp),
                IMAGE_SIZE,
            ],
            log,
        )
        tmp.chmod(0o444)
        os.replace(tmp, image)
    finally:
        remove_build_dir(work)


def base_image(vmlinuz: str) -> tuple[Path, bool]:
    """The cached base image for this kernel, built first if absent: (path, built now)."""
    version = kernel_version(vmlinuz)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    image = CACHE_DIR / f"base-{cache_key(version)}.ext4"
    with (CACHE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.exists():
            return image, False
        build(image, version)
        # Images of other inputs are stale: each is some 700 MB.
        for old in CACHE_DIR.glob("base-*.ext4"):
            if old != image:
                old.unlink()
        return image, True


def newest_kernel() -> str:
    """The newest ``/boot/vmlinuz-*`` that has its modules and initrd."""

    def numbers(path: Path) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", path.name)]

    for path in sorted(Path("/boot").glob("vmlinuz-*"), key=numbers, reverse=True):
        version = kernel_version(str(path))
        if (Path("/boot") / f"initrd.img-{version}").exists() and (
            Path("/lib/modules") / version
        ).is_dir():
            return str(path)
    raise RuntimeError("no /boot/vmlinuz-* with its initrd and modules (linux-image-amd64)")


def main() -> int:
    start = time.monotonic()
    image, built = base_image(newest_kernel())
    state = "built" if built else "cached"
    print(f"{image} ({state}, {time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
