"""tests/processes.py: a command's whole process tree ends with it, even children in sessions of their own."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest
from processes import run_tree

# Starts a grandchild in a session of its own (as torchrun starts its workers), writes its pid to a file,
# then waits, or exits at once with status 3 and leaves the grandchild behind.
SPAWNER = """
import pathlib, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
pathlib.Path(sys.argv[2]).write_text(str(grandchild.pid))
if sys.argv[1] == "exit":
    sys.exit(3)
time.sleep(120)
"""


def _started(pid_file, seconds: float = 60.0) -> int:
    deadline = time.monotonic() + seconds
    while not (pid_file.is_file() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the spawner did not start its grandchild"
        time.sleep(0.1)
    return int(pid_file.read_text())


def _gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_timeout_ends_the_grandchildren_in_their_own_sessions(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_tree([sys.executable, "-c", SPAWNER, "wait", str(pid_file)], timeout=5)
    grandchild = _started(pid_file, seconds=0)
    assert _gone(grandchild), f"process {grandchild} outlived its command"


def test_a_failed_command_leaves_no_orphan(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    done = run_tree([sys.executable, "-c", SPAWNER, "exit", str(pid_file)], timeout=60)
    assert done.returncode == 3
    grandchild = _started(pid_file, seconds=0)
    assert _gone(grandchild), f"process {grandchild} outlived its command"
