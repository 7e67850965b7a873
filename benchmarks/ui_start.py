"""How long `steerguide ui` takes to serve its page: wall and CPU seconds until the first HTTP 200.

    python benchmarks/ui_start.py --runs 3 [--port 7871] [-- extra ui options]

Starts `python -m steerguide ui --port N` (the toy world by default), polls http://127.0.0.1:N/ every
50 ms, and at the first 200 reads the server's CPU time (user + system, from /proc) before stopping it.
CPU time is what to compare on a busy machine; wall time only means something on an idle one.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _first_200(url: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    return False


def measure(port: int, extra: list[str], timeout: float) -> tuple[float, float]:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "steerguide", "ui", "--port", str(port), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if not _first_200(f"http://127.0.0.1:{port}/", process, timeout):
            raise SystemExit(
                f"no page within {timeout:.0f} s: {process.stderr.read().decode()[-500:] if process.poll() is not None else ''}"
            )
        wall = time.monotonic() - start
        cpu = _cpu_seconds(process.pid)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("extra", nargs="*", help="more `steerguide ui` options (after --)")
    args = parser.parse_args()
    walls, cpus = [], []
    for i in range(args.runs):
        wall, cpu = measure(args.port, args.extra, args.timeout)
        walls.append(wall)
        cpus.append(cpu)
        print(f"run {i + 1}: first 200 after {wall:.2f} s wall, {cpu:.2f} s CPU (server process)", flush=True)
    print(
        f"median of {args.runs}: {statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} s CPU; "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
