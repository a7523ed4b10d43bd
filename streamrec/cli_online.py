"""The serving side of the CLI: `streamrec serve` and `streamrec bench serve`.

Registered on the main app by `streamrec.cli`; FastAPI, torch and FAISS load only when
a command runs.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from streamrec.settings import get_settings


def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default STREAMREC_API_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default STREAMREC_API_PORT).")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes; about one per core left to serving.")
    ] = 1,
) -> None:
    """Run the recommendation API (OpenAPI docs at /docs) until stopped.

    Loads the registry's current model and index, reads features from the online store,
    reranks with the bandit, and logs impressions to Kafka. Newly published models are
    picked up within STREAMREC_RELOAD_POLL_S (or at once via POST /v1/admin/reload).
    """
    import uvicorn

    s = get_settings()
    uvicorn.run(
        "online.app:app_from_settings",
        factory=True,
        workers=workers,
        host=host or s.api_host,
        port=port or s.api_port,
        log_level=s.log_level.lower(),
        access_log=False,
    )


def bench_serve(
    items: Annotated[int, typer.Option(help="Catalogue size of the benchmark model.")] = 100_000,
    users: Annotated[int, typer.Option(help="Users with live features.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Requests per second offered (open loop).")] = 500,
    seconds: Annotated[float, typer.Option(help="How long to offer load.")] = 20,
    concurrency: Annotated[int, typer.Option(help="Client connections.")] = 32,
    k: Annotated[int, typer.Option(help="Items per request.")] = 10,
    workers: Annotated[int, typer.Option(min=1, help="API server processes.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Offer a fixed request rate to a live API server and report latency and errors."""
    from benchmarks.serve import run_serve_bench

    result = run_serve_bench(
        items=items,
        users=users,
        rate=rate,
        seconds=seconds,
        concurrency=concurrency,
        k=k,
        workers=workers,
    )
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for key, value in result.items():
            typer.echo(f"{key:>22}: {value}")
