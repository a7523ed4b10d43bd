"""The batch side of the CLI: retrain, the model registry, import and batch recommendations.

Registered on the main app by `streamrec.cli`; heavy imports (torch, FAISS, pandas) happen
inside each command so `streamrec --help` stays fast.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamrec.errors import ConfigError
from streamrec.settings import get_settings

models_app = typer.Typer(help="Model versions: list, promote, roll back.", no_args_is_help=True)
console = Console(stderr=True)


def parse_time(value: str | None, name: str) -> int | None:
    """ISO 8601 date/time (UTC when no offset) or epoch ms → epoch ms."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--{name}: {value!r} is not ISO 8601 (e.g. 2026-11-21T00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _registry() -> Any:
    from models.registry import Registry

    return Registry(get_settings().registry_dir)


def retrain(
    since: Annotated[str | None, typer.Option(help="Window start (ISO 8601 or epoch ms).")] = None,
    until: Annotated[str | None, typer.Option(help="Window end, exclusive.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Retrain TOML (default: offline/retrain.toml).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Publish even if the gate refuses (logged).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train the two-tower on the archived events, evaluate, gate, publish with its index."""
    from offline.config import load_retrain_config
    from offline.retrain import retrain as run

    s = get_settings()
    cfg = load_retrain_config(config)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task("training", total=cfg.model.max_epochs, info="")

        def on_progress(p: dict[str, Any]) -> None:
            if p.get("event") == "epoch":
                info = f"epoch {p['epoch']} train {p['train_loss']:.3f}"
                if p.get("valid_loss") is not None:
                    info += f" valid {p['valid_loss']:.3f}"
                bar.update(task, completed=p["epoch"], info=info)
            elif p.get("event") == "step":
                bar.update(task, info=f"epoch {p['epoch']} step {p['step']} loss {p['loss']:.3f}")

        result = run(
            s.archive_dir,
            _registry(),
            cfg,
            parse_time(since, "since"),
            parse_time(until, "until"),
            force=force,
            progress=on_progress,
        )
    if as_json:
        typer.echo(json.dumps(result.summary, default=str))
        return
    _print_summary(result.summary, result.version_dir)


def _print_summary(summary: dict[str, Any], version_dir: Path | None) -> None:
    out = Console()
    m = summary["metrics"]
    table = Table(title=f"Holdout metrics ({summary['dataset']['test_users']:,} test users)")
    table.add_column("metric")
    for name in m:
        table.add_column(name, justify="right")
    for key in (k for k in next(iter(m.values())) if k != "users"):
        table.add_row(key, *(f"{m[n][key]:.4f}" for n in m))
    out.print(table)
    d, t, g = summary["dataset"], summary["training"], summary["gate"]
    out.print(
        f"data: {d['events']:,} events, {d['train_examples']:,} examples, "
        f"{d['vocab_items']:,} items | training: {t['epochs']} epochs "
        f"(best {t['best_epoch']}) in {t['seconds']:.1f}s on {t['device']}"
    )
    idx = summary["index"]
    out.print(
        f"index: {idx.get('kind')} over {idx.get('n_items'):,} items, "
        f"recall@100 vs exact {idx.get('recall_at_100', float('nan')):.4f}"
    )
    colour = "green" if g["decision"].startswith("publish") else "yellow"
    out.print(f"[{colour}]{summary['version']}: {g['decision']}[/] ({g['reason']})")
    if version_dir:
        out.print(f"report: {version_dir / 'report.md'}  plot: {version_dir / 'report.png'}")


@models_app.command("list")
def models_list() -> None:
    """Every version, its window, gate metric and decision; * marks the serving one."""
    versions = _registry().list()
    if not versions:
        typer.echo("no versions yet; run `streamrec retrain`")
        return
    table = Table()
    for col in ("", "version", "metric", "new", "decision", "code"):
        table.add_column(col)
    for v in versions:
        gate = v.meta.get("gate", {})
        metric = gate.get("metric", "")
        new = v.meta.get("metrics", {}).get("two_tower", {}).get(metric)
        table.add_row(
            "*" if v.current else "",
            v.name,
            metric,
            f"{new:.4f}" if isinstance(new, float) else "-",
            gate.get("decision", "-"),
            str(v.meta.get("code_version", "-")),
        )
    Console().print(table)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version name (see `streamrec models list`).")],
) -> None:
    """Serve VERSION (verified against its checksums first), atomically."""
    _registry().promote(version, reason="manual promote")
    typer.echo(f"{version} is now serving")


@models_app.command("rollback")
def models_rollback() -> None:
    """Serve the version that served before the current one."""
    typer.echo(f"rolled back; {_registry().rollback()} is now serving")


def import_(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet: user_id,item_id,timestamp[,…].")],
    positive_rating: Annotated[
        float, typer.Option(help="With a rating column: ratings >= this count as clicks.")
    ] = 4.0,
    event_type: Annotated[
        str, typer.Option(help="Event type of rows without event_type or rating.")
    ] = "click",
) -> None:
    """Load a team's interaction history into the offline store, for retrain."""
    from offline.importer import import_interactions

    s = get_settings()
    r = import_interactions(
        file,
        s.archive_dir,
        positive_rating=positive_rating,
        default_event_type=event_type,
        max_future_skew_s=s.max_future_skew_s,
    )
    typer.echo(f"{file}: {r.rows:,} rows, {r.loaded:,} loaded, {r.rejected:,} rejected")
    for reason, n in r.reasons.most_common():
        typer.echo(f"  {n:>8,}  {reason}")
    if r.rejected_file:
        typer.echo(f"rejected rows with reasons: {r.rejected_file}")


def recommend(
    out: Annotated[Path, typer.Option(help="CSV to write (user_id,item_id,rank,score).")],
    users: Annotated[Path | None, typer.Option(help="File of user ids (or CSV user_id).")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="Every user in the archive.")] = False,
    k: Annotated[int, typer.Option("-k", min=1, max=10_000, help="Items per user.")] = 10,
) -> None:
    """Batch top-K per user from the published model, excluding items already seen."""
    from offline.recommend import read_user_file
    from offline.recommend import recommend as run

    if (users is None) == (not all_users):
        raise ConfigError("give exactly one of --users FILE or --all")
    wanted = read_user_file(users) if users else None
    s = get_settings()
    t = time.monotonic()
    r = run(s.archive_dir, _registry(), out, k, wanted)
    typer.echo(
        f"{out}: {r.rows:,} rows for {r.users:,} users from {r.version} "
        f"in {time.monotonic() - t:.1f}s"
    )
