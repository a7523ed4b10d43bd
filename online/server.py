"""Running the API: in a background thread (demo, tests) or as N server processes.

`serve_processes` gives every process its own listening socket on the same port
(SO_REUSEPORT), so the kernel spreads connections evenly across them. With one shared
socket (uvicorn's own `workers=`), whichever process wakes first accepts: measured on
the 2-core box, 32 keep-alive clients all landed on one of two processes, which then ran
at 91 % of a core while the other idled, and p99 latency went from tens to hundreds of ms.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

import uvicorn
from fastapi import FastAPI

from streamrec.errors import StreamrecError

log = logging.getLogger(__name__)

APP_FACTORY = "online.app:app_from_settings"


class BackgroundServer:
    """`with BackgroundServer(app, port) as srv:` — serves on 127.0.0.1 until the block ends."""

    def __init__(self, app: FastAPI, port: int, host: str = "127.0.0.1") -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StreamrecError(f"the API did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def reuseport_supported() -> bool:
    """SO_REUSEPORT balances connections on Linux (elsewhere it does not, or is absent)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_reuseport(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that other processes may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StreamrecError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def own_metrics() -> None:
    """Keep prometheus_client in its plain in-process mode in this process and its children.

    Importing `feast.metrics` exports PROMETHEUS_MULTIPROC_DIR (a temp dir of its own)
    when unset, which switches prometheus_client, in every process started afterwards,
    to file-backed values: each update then takes a lock, checks the pid and writes an
    mmap (about 8 % of a recommendation's CPU, measured). Each API process exposes its
    own /metrics, so that mode buys nothing here; a directory the operator set is kept.
    """
    for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
        if Path(os.environ.get(name, "/")).name.startswith("feast_metrics_"):
            del os.environ[name]


def _run_worker(sock: socket.socket, log_level: str) -> None:
    config = uvicorn.Config(
        APP_FACTORY, factory=True, log_level=log_level, access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run(sockets=[sock])


def serve_processes(host: str, port: int, workers: int, log_level: str) -> None:
    """Run `workers` API processes until SIGINT/SIGTERM; a process that dies is restarted."""
    own_metrics()
    if workers == 1 or not reuseport_supported():
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
        )
        return
    # All sockets are bound before any process starts: a connection that arrives while
    # a process still loads its model waits in that socket's backlog, never elsewhere.
    sockets = [bind_reuseport(host, port) for _ in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    stopping = threading.Event()

    def start(sock: socket.socket) -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=_run_worker, args=(sock, log_level), name="streamrec-api")
        proc.start()
        return proc

    def stop(signum: int, _: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    procs = [start(sock) for sock in sockets]
    log.info("serving on http://%s:%d with %d processes (SO_REUSEPORT)", host, port, workers)
    try:
        while not stopping.wait(0.5):
            for i, proc in enumerate(procs):
                if not proc.is_alive():
                    log.error("API process %d exited (%s); restarting", proc.pid, proc.exitcode)
                    procs[i] = start(sockets[i])
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: uvicorn finishes open requests, then exits
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
        for sock in sockets:
            sock.close()
