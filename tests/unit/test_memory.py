"""Peak memory sampling (framework/memory.py): a freed allocation still shows in the peak; children count."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil

from framework.memory import GIB, PeakMemory, node_bytes, tree_bytes

MB = 1 << 20


def test_the_peak_keeps_an_allocation_that_was_freed_between_two_snapshots():
    watch = PeakMemory(interval_s=0.02)
    try:
        before = watch.snapshot()
        block = np.ones(300 * MB // 8)  # touched pages: really resident
        time.sleep(0.3)  # a few sampling intervals
        del block
        after = watch.snapshot()
        assert after["peak_mem_gib"] - before["mem_gib"] > 250 * MB / GIB
        assert after["mem_gib"] < after["peak_mem_gib"] - 200 * MB / GIB  # the block is gone now
    finally:
        watch.close()


def test_a_child_process_counts_in_the_tree():
    alone = tree_bytes()
    code = "import sys, time; b = bytearray(200 * 2**20); print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        assert tree_bytes() - alone > 180 * MB
        assert tree_bytes(child.pid) > 180 * MB
    finally:
        child.kill()
        child.wait()


def test_node_memory_is_positive_and_a_vanished_pid_is_zero():
    total = psutil.virtual_memory().total
    # (no order between the two: RSS also counts file-backed pages, e.g. mapped torch libraries,
    # which the node's "used" leaves to the page cache; a large test process can exceed it)
    assert 0 < node_bytes() <= total
    assert 0 < tree_bytes() <= total
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert tree_bytes(gone.pid) == 0
