"""heap.release_memory: the collector, then glibc's malloc_trim where there is one."""

from __future__ import annotations

import gc
import sys

import pytest

from lm_eval_approx import heap


def _resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap and /proc are Linux's")
def test_freed_small_blocks_go_back_to_the_system():
    if heap._malloc_trim() is None:
        pytest.skip("this C library is not glibc")
    before = _resident_bytes()
    # 64 KiB blocks stay below glibc's mmap threshold, so freeing them alone leaves them in the heap
    blocks = [bytearray(64 * 1024) for _ in range(8000)]  # about 500 MiB
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page, so it is resident
    keep = blocks[-1:]
    del blocks
    gc.collect()
    held = _resident_bytes() - before
    assert heap.release_memory() is True
    after = _resident_bytes() - before
    assert held > 200 * 2**20, f"the freed blocks were not held ({held / 2**20:.0f} MiB): the test proves nothing"
    assert after < held / 4, f"{held / 2**20:.0f} MiB held before the trim, {after / 2**20:.0f} MiB after"
    assert keep[0][0:1] == b"x"  # what is still referenced is untouched


def test_without_glibc_only_the_collector_runs(monkeypatch):
    collected = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    monkeypatch.setattr(heap.gc, "collect", lambda: collected.append(True) or 0)
    assert heap.release_memory() is False
    assert collected == [True]


def test_a_platform_other_than_linux_has_no_trim(monkeypatch):
    heap._malloc_trim.cache_clear()
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    try:
        assert heap._malloc_trim() is None
    finally:
        heap._malloc_trim.cache_clear()


def test_without_collect_only_the_trim_runs(monkeypatch):
    collected, trimmed = [], []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: trimmed.append)
    monkeypatch.setattr(heap.gc, "collect", lambda: collected.append(True) or 0)
    assert heap.release_memory(collect=False) is True
    assert collected == [] and trimmed == [0]
