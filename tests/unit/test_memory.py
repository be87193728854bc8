"""daemon.memory: handing freed memory back after the large passes."""

from __future__ import annotations

import pytest

from nodeagent.daemon import memory


def test_release_free_memory_is_harmless_and_repeatable() -> None:
    blobs = [bytes(1 << 16) for _ in range(64)]
    del blobs
    memory.release_free_memory()
    memory.release_free_memory()


def test_without_glibc_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_TRIM", None)
    memory.release_free_memory()
