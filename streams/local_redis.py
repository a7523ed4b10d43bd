"""A private redis-server on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from streamrec.errors import StoreError
from streams.broker import free_port, port_open, stop_process


def start_redis_server(
    workdir: Path, timeout_s: float = 10.0
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start redis-server (no persistence) and return its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StoreError("redis-server is not installed (scripts/setup installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout_s
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_process(proc, 1)
            raise StoreError(f"redis-server did not listen on {port} within {timeout_s}s")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", proc
