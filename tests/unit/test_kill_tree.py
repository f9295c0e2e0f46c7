"""``kill_local_tree`` (framework/actors/stats.py): a killed actor's recorded processes, and the ones
they started after the record, are all gone (no orphaned vLLM engine outlives its actor)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import ray

from framework.actors.stats import kill_local_tree

# a parent that starts a child after it was "recorded" (prints the child's pid), then waits
PARENT = (
    "import subprocess, sys, time;"
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
    "print(c.pid, flush=True); time.sleep(600)"
)


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_recorded_processes_and_their_later_children_are_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        killed = kill_local_tree(ray.util.get_node_ip_address(), [parent.pid])  # only the parent recorded
        assert killed == 2
        parent.wait(timeout=10)
        assert _gone(child)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_another_node_s_processes_are_left_alone():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert kill_local_tree("10.255.255.1", [proc.pid]) == 0
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
