"""daemon.memory: handing freed memory back after the large passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.daemon import memory

ROOT = Path(__file__).resolve().parents[2]


def test_release_free_memory_is_harmless_and_repeatable() -> None:
    blobs = [bytes(1 << 16) for _ in range(64)]
    del blobs
    memory.release_free_memory()
    memory.release_free_memory()


def test_without_glibc_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_TRIM", None)
    memory.release_free_memory()


# In a child process: the RSS a worker thread's read of a 20 MB reply in 64 KB
# pieces (joined, then freed, as a read-back does) leaves behind after a trim.
_READ_BACK = """
import sys, threading
from nodeagent.daemon import memory
if sys.argv[1] == "tuned":
    assert memory.tune_malloc()
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))
def read_backs():
    big = bytes(20 << 20)  # a first large block, freed: glibc raises its thresholds
    del big
    for _ in range(2):
        chunks = ["x" * 65000 + str(i) for i in range(300)]
        text = "".join(chunks)
        kept = [c[:600] for c in chunks[::3]]  # what a parse keeps, among the pieces
        del chunks, text
    memory.release_free_memory()
    read_backs.kept = kept
before = rss()
t = threading.Thread(target=read_backs)
t.start()
t.join()
print(rss() - before)
"""


def left_resident(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _READ_BACK, mode],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return int(done.stdout)


def test_tuned_malloc_keeps_no_free_space_after_a_large_read() -> None:
    if memory._MALLOPT is None:
        pytest.skip("not glibc")
    untuned = left_resident("plain")
    if untuned < 10:
        pytest.skip(f"this C library kept {untuned} MB untuned: nothing to show")
    assert left_resident("tuned") < 5, f"untuned: {untuned} MB"
