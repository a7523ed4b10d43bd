"""Where the cores went during a benchmark: CPU seconds per process, from Linux /proc."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int, skip: str = "resource_tracker") -> list[int]:
    """Direct child processes of `pid` whose command line lacks `skip` (by default
    multiprocessing's resource tracker). Linux /proc; empty elsewhere."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    out = []
    for child in text.split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if skip.encode() not in cmdline:
            out.append(int(child))
    return out


class CpuMeter:
    """CPU seconds per component over the timed window: where the 2 cores went.

    A component without a process of this bench's own (an outside Redis) reads None;
    `client` names this process (the bench's own load generator).
    """

    def __init__(self, pids: dict[str, int | list[int] | None], client: str) -> None:
        self._pids = {
            name: [p] if isinstance(p, int) else p for name, p in pids.items() if p is not None
        }
        self._names = [*pids, client]
        self._client = client
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        out = {name: sum(cpu_s(p) for p in pids) for name, pids in self._pids.items()}
        t = os.times()
        out[self._client] = t.user + t.system
        return out

    def used(self) -> dict[str, float | None]:
        """CPU seconds per component since the meter started."""
        end = self._read()
        return {k: (end[k] - self._start[k]) if k in end else None for k in self._names}

    def split(self, wall_s: float) -> dict[str, float | None]:
        """Cores used on average per component (1.0 = one core busy all the time)."""
        return {k: None if v is None else round(v / wall_s, 2) for k, v in self.used().items()}
