"""Running the API: in a background thread (demo, tests) or as N server processes.

`serve_processes` gives every process its own listening socket on the same port
(SO_REUSEPORT), so the kernel spreads connections evenly across them. With one shared
socket (uvicorn's own `workers=`), whichever process wakes first accepts: measured on
the 2-core box, 32 keep-alive clients all landed on one of two processes, which then ran
at 91 % of a core while the other idled, and p99 latency went from tens to hundreds of ms.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

from streamrec.errors import StreamrecError
from streamrec.metrics_mode import own_metrics

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
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
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


def ensure_port_free(host: str, port: int) -> None:
    """Raise StreamrecError if anything listens on host:port already. SO_REUSEPORT binds
    would join such a listener (say, processes left over from an earlier server) and
    silently share its traffic; a plain bind fails instead."""
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
    try:
        probe.bind((host, port))
    except OSError as exc:
        raise StreamrecError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    finally:
        probe.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies, so a SIGKILLed supervisor leaves
    no API processes behind holding the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _run_worker(sock: socket.socket, log_level: str) -> None:
    _die_with_parent()
    config = uvicorn.Config(
        APP_FACTORY, factory=True, log_level=log_level, access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run(sockets=[sock])


_QUICK_EXIT_S = 30.0  # a process that dies sooner than this after starting "failed fast"
_MAX_QUICK_EXITS = 5  # in a row, for one slot: give up (a broken deployment, not bad luck)


def serve_processes(host: str, port: int, workers: int, log_level: str) -> None:
    """Run `workers` API processes until SIGINT/SIGTERM.

    A process that dies is restarted with a growing delay; one that keeps dying within
    seconds of starting (a bad model path, a missing store) stops the server with an error.
    """
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
    ensure_port_free(host, port)
    # All sockets are bound before any process starts: a connection that arrives while
    # a process still loads its model waits in that socket's backlog, never elsewhere.
    sockets = [bind_reuseport(host, port) for _ in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True  # a plain flag: taking locks in a signal handler can deadlock

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    slots = [_Slot(ctx, sock, log_level) for sock in sockets]
    log.info("serving on http://%s:%d with %d processes (SO_REUSEPORT)", host, port, workers)
    try:
        while not stopping:
            time.sleep(0.2)
            for slot in slots:
                slot.tend()
    finally:
        for slot in slots:
            slot.terminate()
        for slot in slots:
            slot.join()
        for sock in sockets:
            sock.close()


class _Slot:
    """One API process and its socket: started, watched, restarted with backoff."""

    def __init__(self, ctx: Any, sock: socket.socket, log_level: str) -> None:
        self._ctx, self._sock, self._log_level = ctx, sock, log_level
        self._quick_exits = 0
        self._retry_at = 0.0
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._start()

    def _start(self) -> None:
        self._proc = self._ctx.Process(
            target=_run_worker, args=(self._sock, self._log_level), name="streamrec-api"
        )
        self._proc.start()
        self._started = time.monotonic()

    def tend(self) -> None:
        proc = self._proc
        if proc is not None and proc.is_alive():
            return
        if proc is not None:  # just found dead
            quick = time.monotonic() - self._started < _QUICK_EXIT_S
            self._quick_exits = self._quick_exits + 1 if quick else 0
            if self._quick_exits >= _MAX_QUICK_EXITS:
                raise StreamrecError(
                    f"API process exited {self._quick_exits} times in a row within "
                    f"{_QUICK_EXIT_S:.0f} s of starting (last exit code {proc.exitcode}); "
                    "its log says why. Stopping."
                )
            delay = min(0.5 * 2**self._quick_exits, 30.0)
            log.error(
                "API process %d exited (%s); restarting in %.1f s", proc.pid, proc.exitcode, delay
            )
            self._proc, self._retry_at = None, time.monotonic() + delay
        if time.monotonic() >= self._retry_at:
            self._start()

    def terminate(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.terminate()  # SIGTERM: uvicorn finishes open requests, then exits

    def join(self) -> None:
        if self._proc is not None:
            self._proc.join(timeout=15)
            if self._proc.is_alive():
                self._proc.kill()
