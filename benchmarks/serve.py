"""`streamrec bench serve`: a fixed request rate against a live API server process.

Sets up, under a temp directory: the embedded broker (impressions really go to Kafka), a
published model over `items` items with its index (weights random-initialised: latency
does not depend on what the weights learned, and training a 100k-item model would take
longer than the benchmark), live features for `users` users in the online store, and the
item board. Then starts `streamrec serve` as its own process and offers `rate` requests
per second for `seconds` from an open-loop asyncio client (raw HTTP/1.1 keep-alive, so
the client costs little of the machine's two cores). Latency is measured from each
request's *scheduled* send time, so a stalled server cannot hide queueing delay
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop  # the client's event loop: libuv costs the shared cores less than asyncio's

from benchmarks.cpu import CpuMeter, children, cpu_s
from streamrec.settings import Settings, load_settings


def _publish_random_model(settings: Settings, items: int) -> str:
    import torch

    from features.vectors import ITEM_DENSE_NAMES, USER_DENSE_NAMES
    from index.build import build_index
    from index.config import IndexConfig
    from models.config import load_config
    from models.data import FIRST_ITEM, ItemVocab
    from models.embed import item_embeddings
    from models.io import save_model
    from models.registry import Registry
    from models.two_tower import TwoTower

    torch.manual_seed(0)
    cfg = load_config()
    vocab = ItemVocab.from_ids([f"i{j}" for j in range(items)])
    dense = torch.rand(len(vocab), len(ITEM_DENSE_NAMES))
    model = TwoTower(cfg, len(vocab), len(USER_DENSE_NAMES), dense)
    model.eval()
    reg = Registry(settings.registry_dir)
    staged = reg.stage()
    version = reg.next_version()
    save_model(model, cfg, staged / "model")
    vocab.save(staged / "vocab.json")
    vecs = item_embeddings(model)[FIRST_ITEM:]
    rng = np.random.default_rng(0)
    queries = vecs[rng.choice(len(vecs), 200, replace=False)] + rng.normal(
        0, 0.05, (200, vecs.shape[1])
    )
    index = build_index(
        vecs, vocab.ids[FIRST_ITEM:], IndexConfig(), sample_queries=queries.astype(np.float32)
    )
    index.save(staged / "index")
    (staged / "meta.json").write_text(json.dumps({"recent_items": 50, "benchmark": True}))
    reg.commit(staged, {"recent_items": 50, "benchmark": "random-init weights"}, version)
    reg.promote(version, reason="serve benchmark")
    return version


def _write_features(settings: Settings, users: int, items: int) -> None:
    from features.aggregates import USER_FEATURES
    from features.online_state import BoardEntry
    from features.repo import ITEM_KEY, ITEM_VIEW, USER_KEY, USER_VIEW, apply
    from streams.sinks import open_state, open_writer

    apply(settings)
    writer = open_writer(settings)
    rng = np.random.default_rng(1)
    now = int(time.time() * 1000)
    rows = []
    for u in range(users):
        row: dict[str, Any] = {f: int(rng.integers(0, 20)) for f in USER_FEATURES}
        row["recent_items"] = [f"i{j}" for j in rng.integers(0, items, 20)]
        row["last_seen_ms"] = now
        rows.append((f"u{u}", row, now))
    writer.write(USER_VIEW, USER_KEY, rows)
    item_rows = []
    for j in range(min(items, 20_000)):
        imps = int(rng.integers(1, 500))
        clicks = int(rng.integers(0, imps // 5 + 1))
        feats = {
            "impressions_1h": imps // 10,
            "clicks_1h": clicks // 10,
            "purchases_1h": 0,
            "impressions_24h": imps,
            "clicks_24h": clicks,
            "purchases_24h": clicks // 10,
            "ctr_smoothed": (clicks + 1) / (imps + 20),
            "popularity_24h": imps + clicks,
        }
        item_rows.append((f"i{j}", feats, now))
    writer.write(ITEM_VIEW, ITEM_KEY, item_rows)
    writer.close()
    state = open_state(settings)
    state.write_board(
        [
            BoardEntry(
                i,
                float(f["popularity_24h"]),
                float(f["ctr_smoothed"]),
                float(f["clicks_24h"]),
                float(f["impressions_24h"]),
                now,
                now,
            )
            for i, f, _ in item_rows
        ]
    )
    state.close()


async def _client(
    host: str, port: int, users: int, rate: float, seconds: float, concurrency: int, k: int
) -> tuple[list[float], int, int, int]:
    conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(concurrency):
        conns.put_nowait(await asyncio.open_connection(host, port))
    lat: list[float] = []
    errors = degraded = 0
    total = int(rate * seconds)
    clock = time.perf_counter  # libuv's loop.time() has only millisecond resolution
    start = clock() + 0.05
    rng = np.random.default_rng(2)
    user_ids = rng.integers(0, users, total)

    async def one(i: int) -> None:
        nonlocal errors, degraded
        scheduled = start + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        reader, writer = await conns.get()
        try:
            path = f"/v1/recommendations/u{user_ids[i]}?k={k}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            lat.append(clock() - scheduled)
            if status != 200:
                errors += 1
            elif b'"degraded":true' in body:
                degraded += 1
            conns.put_nowait((reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conns.put_nowait(await asyncio.open_connection(host, port))

    await asyncio.gather(*(one(i) for i in range(total)))
    while not conns.empty():
        _, w = conns.get_nowait()
        w.close()
    return lat, errors, degraded, total


def run_serve_bench(
    *, items: int, users: int, rate: float, seconds: float, concurrency: int, k: int, workers: int
) -> dict[str, Any]:
    from streams.broker import EmbeddedBroker, free_port, stop_process
    from streams.demo import settings_env

    with tempfile.TemporaryDirectory(prefix="streamrec-bench-serve-") as tmp:
        broker = EmbeddedBroker(free_port(), log_path=None).start()
        port = free_port()
        try:
            settings = load_settings(
                data_dir=Path(tmp),
                kafka_bootstrap=broker.bootstrap,
                api_auth="off",
                api_port=port,
                log_level="WARNING",
            )
            t0 = time.monotonic()
            version = _publish_random_model(settings, items)
            _write_features(settings, users, items)
            setup_s = time.monotonic() - t0
            env = settings_env(settings) | {"OMP_NUM_THREADS": "1"}
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamrec.cli", "serve", "--workers", str(workers)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                _wait_ready(port, proc)
                # The set-up left torch, FAISS and Feast in this process: keep the
                # collector from walking them mid-measurement (client-side pauses).
                gc.collect()
                gc.freeze()
                # warm-up: let the allocator, FAISS and the JIT-free paths settle
                uvloop.run(_client("127.0.0.1", port, users, rate, 2.0, concurrency, k))
                api_pids = children(proc.pid) or [proc.pid]
                each = [cpu_s(p) for p in api_pids]
                cpu = CpuMeter(
                    {"api": api_pids, "broker (tansu)": broker.pid}, client="bench client"
                )
                started = time.monotonic()
                lat, errors, degraded, total = uvloop.run(
                    _client("127.0.0.1", port, users, rate, seconds, concurrency, k)
                )
                wall = time.monotonic() - started
                used = cpu.used()
                each = [cpu_s(p) - before for p, before in zip(api_pids, each, strict=True)]
                server = _server_stages(port)
            finally:
                stop_process(proc, 10)
                if proc.stderr is not None:
                    proc.stderr.close()
        finally:
            broker.stop()
    ms = np.asarray(lat) * 1000 if lat else np.zeros(1)
    return {
        "items": items,
        "users": users,
        "workers": workers,
        "offered_rps": rate,
        "rps": round(len(lat) / wall, 1),
        "requests": total,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "error_rate": round(errors / max(total, 1), 6),
        "degraded_rate": round(degraded / max(total, 1), 6),
        "server_mean_ms": server,
        # API CPU per answered request, all server processes together: the figure that
        # decides how close to saturation the cores run (less noisy than latency).
        "api_cpu_ms_per_request": round(1000 * (used["api"] or 0.0) / max(len(lat), 1), 3),
        "cores_used": {k: None if v is None else round(v / wall, 2) for k, v in used.items()},
        # Per server process: an even split shows the kernel spreading connections.
        "api_cores_per_process": [round(c / wall, 2) for c in each],
        "model": f"{version} (random-init weights; latency only)",
        "setup_s": round(setup_s, 1),
        "cpus": os.cpu_count(),
    }


def _server_stages(port: int) -> dict[str, float]:
    """Mean time per request stage inside one server process (from its /metrics)."""
    import httpx

    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith('streamrec_api_stage_seconds_bucket{le="') and 'stage="total"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
        if line.startswith("streamrec_api_stage_seconds_sum"):
            sums[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("streamrec_api_stage_seconds_count"):
            counts[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    out = {k: round(1000 * sums[k] / counts[k], 3) for k in sums if counts.get(k)}
    if buckets and buckets[-1][1]:  # upper bucket bound holding the 99th percentile
        total = buckets[-1][1]
        out["total_p99_le"] = next(le * 1000 for le, c in sorted(buckets) if c >= 0.99 * total)
    return out


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until /readyz answers 200 on 16 fresh connections in a row: each server process has
    its own socket and the kernel picks one per connection, so a single 200 can come
    from the first process up while another still loads its model."""
    import httpx

    deadline = time.monotonic() + timeout_s
    streak = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"the API exited during start-up:\n{err[-2000:]}")
        try:
            ok = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            ok = False
        streak = streak + 1 if ok else 0
        if streak >= 16:
            return
        time.sleep(0.02 if ok else 0.2)
    raise RuntimeError("the API was not ready in time")
