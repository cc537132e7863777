"""glibc's malloc keeps freed memory for the next train step (moderncnn.cpumem)."""

from __future__ import annotations

import resource

import pytest
import torch

from moderncnn.cpumem import glibc_malloc, keep_freed_memory

glibc = pytest.mark.skipif(not glibc_malloc(), reason="glibc's malloc only")


def _faults_of_a_fresh_block(mib: int) -> int:
    """Minor page faults while a block of ``mib`` MiB is allocated, written and freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(mib * 2**18)  # float32: 4 bytes each
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_a_freed_block_is_reused_without_page_faults():
    assert keep_freed_memory() and keep_freed_memory()  # once set, it stays so
    # larger than the 32 MiB glibc would otherwise always map afresh (and unmap on free); the heap takes a few
    # blocks to grow to where one fits in what the last one freed (seen: 2 to 5)
    for _ in range(8):
        _faults_of_a_fresh_block(64)
    pages = 64 * 2**20 // resource.getpagesize()
    # without the setting: one fault per page, every time
    faults = [_faults_of_a_fresh_block(64) for _ in range(3)]
    assert max(faults) < pages // 10, faults

