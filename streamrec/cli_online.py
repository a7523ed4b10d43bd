"""The serving side of the CLI: `streamrec serve`.

Registered on the main app by `streamrec.cli`; FastAPI, torch and FAISS load only when
a command runs.
"""

from __future__ import annotations

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
    With several workers each process listens on its own SO_REUSEPORT socket (Linux), so
    the kernel spreads connections across them evenly.
    """
    from online.server import serve_processes

    s = get_settings()
    serve_processes(host or s.api_host, port or s.api_port, workers, s.log_level.lower())
