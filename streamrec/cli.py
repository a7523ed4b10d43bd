"""The `streamrec` command line. Every command reads the same STREAMREC_* settings."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from streamrec import cli_batch, cli_online, cli_ope, cli_quality
from streamrec.errors import StreamrecError
from streamrec.settings import Settings, get_settings

app = typer.Typer(
    help="streamrec: a streaming real-time personalization engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
features_app = typer.Typer(help="The Feast feature repository.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print their figures.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(topics_app, name="topics")
app.add_typer(bench_app, name="bench")
app.add_typer(cli_batch.models_app, name="models")
app.add_typer(cli_quality.experiment_app, name="experiment")
app.add_typer(cli_quality.drift_app, name="drift")
app.command("retrain")(cli_batch.retrain)
app.command("import")(cli_batch.import_)
app.command("recommend")(cli_batch.recommend)
app.command("evaluate-policy")(cli_ope.evaluate_policy)
app.command("serve")(cli_online.serve)

log = logging.getLogger("streamrec")


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # FAISS logs every instruction-set probe at INFO; only its problems matter here.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


@app.callback()
def _main() -> None:
    _setup_logging(get_settings())


@app.command()
def config() -> None:
    """Print the effective settings (and the variable that sets each)."""
    s = get_settings()
    for name, info in Settings.model_fields.items():
        typer.echo(f"STREAMREC_{name.upper()}={getattr(s, name)}    # {info.description}")


@app.command()
def broker() -> None:
    """Run the embedded Kafka-protocol broker (tansu, memory only, loopback) until stopped."""
    from streams.broker import EmbeddedBroker
    from streams.topics import ensure_topics

    s = get_settings()
    b = EmbeddedBroker(s.embedded_broker_port).start()
    try:
        ensure_topics(b.bootstrap, [s.events_topic, s.dlq_topic], s.topic_partitions)
        typer.echo(
            f"broker ready on {b.bootstrap}; topics {s.events_topic}, {s.dlq_topic}."
            " Ctrl-C stops it (its data lives in memory only)."
        )
        b.wait()
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


@topics_app.command("create")
def topics_create() -> None:
    """Create the events and dead-letter topics if missing (idempotent)."""
    from streams.topics import ensure_topics

    s = get_settings()
    ensure_topics(s.bootstrap, [s.events_topic, s.dlq_topic], s.topic_partitions)
    typer.echo(f"topics {s.events_topic}, {s.dlq_topic} present on {s.bootstrap}")


@app.command()
def worker(
    idle_exit: Annotated[
        float | None,
        typer.Option(help="Exit after this many seconds without messages (scripted runs)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option(help="Address the metrics server binds (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    stats_out: Annotated[
        Path | None, typer.Option(help="Write freshness samples as JSON here on exit (benchmarks).")
    ] = None,
    role: Annotated[
        Literal["all", "features", "archive"],
        typer.Option(
            help="What this worker does: all (features, dead letters and the Parquet"
            " archive), features (with dead letters), or archive (its own consumer group)."
        ),
    ] = "all",
    nice: Annotated[
        int,
        typer.Option(
            min=0,
            max=19,
            help="Lower this process's CPU priority by this much (10 suits an archive"
            " worker sharing a host with feature workers).",
        ),
    ] = 0,
) -> None:
    """Run one stream worker (start one per partition to scale out).

    One process can do everything (--role all, the default); in production run feature
    workers and archive workers apart, each scaled up to the partition count.
    """
    from streamrec.metrics_mode import own_metrics

    own_metrics()  # before prometheus_client is imported: it picks its mode then
    from streams.worker import StreamWorker, install_signal_handlers

    if nice:
        os.nice(nice)

    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_addr)
    w = StreamWorker(get_settings(), stats_path=stats_out, role=role)
    install_signal_handlers(w)
    w.run(idle_exit_s=idle_exit)


@app.command()
def simulate(
    users: Annotated[int, typer.Option(help="Simulated users.")] = 1000,
    items: Annotated[int, typer.Option(help="Simulated items.")] = 500,
    events: Annotated[int, typer.Option(help="Events to produce.")] = 10_000,
    rate: Annotated[
        float, typer.Option(help="Events per second; 0 = as fast as possible.")
    ] = 2000.0,
    seed: Annotated[int, typer.Option(help="Seed of the world and the stream.")] = 0,
    to_archive: Annotated[
        bool,
        typer.Option(help="Write a backdated history straight into the offline store instead."),
    ] = False,
    days: Annotated[
        float, typer.Option(help="With --to-archive: days of history, ending now.")
    ] = 7.0,
) -> None:
    """Produce a realistic event stream with a planted ground truth (saved for later stages)."""
    from streams.simulate import run_simulation

    s = get_settings()
    if to_archive:
        from offline.simulate import write_history

        n = write_history(s, users=users, items=items, events=events, days=days, seed=seed)
        typer.echo(f"wrote {n} simulated events over {days} days to {s.archive_dir}")
        return
    sent, _ = run_simulation(s, users=users, items=items, events=events, rate=rate, seed=seed)
    typer.echo(
        f"produced {sent} events to {s.events_topic} on {s.bootstrap};"
        f" world saved to {s.data_dir / 'simulation' / 'world.npz'}"
    )


@features_app.command("apply")
def features_apply() -> None:
    """Register entities and feature views, create the online tables (idempotent)."""
    from features.repo import apply

    s = get_settings()
    apply(s)
    typer.echo(
        f"feature repository applied: {s.feature_repo_dir} "
        f"(online store: {'redis' if s.redis_url else 'sqlite'})"
    )


@features_app.command("backfill")
def features_backfill() -> None:
    """Rebuild the feature log (Feast's offline source) from the archived events."""
    from features.backfill import backfill
    from offline.archive import read_events

    s = get_settings()
    counts = backfill(s, read_events(s.archive_dir, columns=()))
    typer.echo(
        f"feature log rebuilt: {counts['user_rows']:,} user rows, {counts['item_rows']:,} "
        f"item rows under {s.data_dir / 'feature_log'}"
    )


@features_app.command("show")
def features_show(
    user: Annotated[list[str] | None, typer.Option(help="User id(s) to show.")] = None,
    item: Annotated[list[str] | None, typer.Option(help="Item id(s) to show.")] = None,
) -> None:
    """Print real-time features read back from the online store through Feast."""
    from features.online_reader import read_features
    from features.repo import open_store

    store = open_store(get_settings())
    for kind, ids in (("user", user), ("item", item)):
        if ids:
            for row in read_features(store, kind, ids):
                typer.echo(json.dumps(row))


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Live simulated events to stream.")] = 20_000,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 5000.0,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 2000,
    items: Annotated[int, typer.Option(help="Simulated items.")] = 1000,
    history: Annotated[int, typer.Option(help="Backdated events to train on.")] = 300_000,
    serve: Annotated[float, typer.Option(help="Keep the API up this many seconds at the end.")] = 0,
    stream_only: Annotated[
        bool, typer.Option(help="Only broker + worker + stream + features (no model, no API).")
    ] = False,
) -> None:
    """The main job on the embedded default, end to end.

    simulate history → retrain and publish → broker + stream worker → live events → the
    API → a user's clicks shift their recommendations → a click comes back as a reward.
    """
    if stream_only:
        from streams.demo import run_demo

        run_demo(get_settings(), events=events, rate=rate, users=users, items=items)
        return
    from online.demo import run_full_demo

    run_full_demo(
        get_settings(),
        users=users,
        items=items,
        history=history,
        events=events,
        rate=rate,
        serve_s=serve,
    )


@bench_app.command("ingest")
def bench_ingest(
    events: Annotated[int, typer.Option(help="Events to push through.")] = 1_000_000,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 20_000,
    items: Annotated[int, typer.Option(help="Simulated items.")] = 5_000,
    store: Annotated[str, typer.Option(help="Online store: redis or sqlite.")] = "redis",
    workers: Annotated[int, typer.Option(min=1, help="Feature worker processes (one group).")] = 2,
    archive_workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Archive worker processes (own group, nice 10). 0, the default: the"
            " feature workers archive too (--role all), which measured better on 2 cores.",
        ),
    ] = 0,
    rate: Annotated[
        int,
        typer.Option(
            min=0,
            help="Offered events/s, paced. The default is the 50k/s target plus 4%: the"
            " window includes the drain after the last send. 0 sends flat out (capacity;"
            " freshness then measures the backlog).",
        ),
    ] = 52_000,
    warm_hours: Annotated[
        int,
        typer.Option(
            min=0,
            max=24,
            help="Start from the item counters a stream at this rate leaves after this"
            " many hours (a day: the steady state, up to 276 counter fields an item);"
            " 0 starts from empty state, which flatters every figure.",
        ),
    ] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Events/s from first produce to last feature visible, and event-to-feature freshness."""
    from benchmarks.ingest import run_ingest_bench

    result = run_ingest_bench(
        events=events,
        users=users,
        items=items,
        store=store,
        workers=workers,
        rate=rate,
        archive_workers=archive_workers,
        warm_hours=warm_hours,
    )
    _print_result(result, as_json)


@bench_app.command("train")
def bench_train(
    interactions: Annotated[int, typer.Option(help="Simulated interactions (clicks).")] = 1_000_000,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 100_000,
    items: Annotated[int, typer.Option(help="Simulated items.")] = 50_000,
    epochs: Annotated[int, typer.Option(help="Epochs to time (early stopping off).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Two-tower training speed (examples/s, epoch seconds) and the resulting holdout metrics."""
    from benchmarks.train import run_train_bench

    _print_result(
        run_train_bench(interactions=interactions, users=users, items=items, epochs=epochs),
        as_json,
    )


@bench_app.command("index")
def bench_index(
    items: Annotated[int, typer.Option(help="Catalogue size.")] = 1_000_000,
    dim: Annotated[int, typer.Option(help="Embedding dimension.")] = 64,
    queries: Annotated[int, typer.Option(help="Queries timed one at a time.")] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Index build time, single-query p50/p99, batch QPS and recall@100 against exact."""
    from benchmarks.index import run_index_bench

    _print_result(run_index_bench(items=items, dim=dim, queries=queries), as_json)


@bench_app.command("serve")
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
    _print_result(result, as_json)


def _print_result(result: dict[str, object], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        for k, v in result.items():
            typer.echo(f"{k:>22}: {v}")


def main() -> None:
    try:
        app()
    except StreamrecError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
