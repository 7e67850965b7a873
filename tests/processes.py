"""Subprocesses a test starts, and every process they start in turn, ended when the test is done.

`accelerate launch` runs torchrun, which starts each worker in a session of its own: killing the launcher,
or even its process group, leaves the workers running (orphans that held both cores of a CI machine). So
every process of the tree is marked through its environment, which children inherit whatever their
session or parent becomes, and the marked ones are ended when the command finishes, fails or times out.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid

import psutil

MARK = "STEERGUIDE_TEST_TREE"


def run_tree(
    cmd: list[str], *, timeout: float, env: dict | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)`, leaving no process behind.

    The output goes through files, not pipes, so that a child left holding them cannot keep the call
    waiting once the command itself has exited."""
    mark = uuid.uuid4().hex
    env = {**(os.environ if env is None else env), MARK: mark}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=err, text=True, start_new_session=True, **kwargs
        )
        try:
            proc.wait(timeout=timeout)
        finally:  # finished, failed, timed out or interrupted: the whole tree ends
            end_marked(mark)
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


def end_marked(mark: str, grace: float = 5.0) -> list[int]:
    """SIGTERM every process carrying `mark` (torchrun then stops its workers), SIGKILL what is left after
    `grace` seconds; returns their pids."""
    marked = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(MARK) == mark:
                marked.append(process)
        except (psutil.Error, OSError):  # gone, a zombie, or not ours to read
            continue
    for process in marked:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(marked, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in marked]
