"""`streamrec evaluate-policy`: how a candidate policy would have done on logged traffic.

Registered on the main app by `streamrec.cli`; numpy, pandas and the estimators load
inside the command so `streamrec --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from streamrec.cli_batch import parse_time
from streamrec.errors import ConfigError
from streamrec.settings import get_settings


def evaluate_policy(
    policy: Annotated[
        list[str],
        typer.Option(
            "--policy",
            "-p",
            help="Candidate policy spec (repeat to compare several); see Policies above.",
        ),
    ],
    log: Annotated[
        Path | None,
        typer.Option(help="Archive directory (default: the configured archive) or an OBD .csv."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Impressions from (ISO 8601 or epoch ms).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Impressions before (exclusive); clicks read a window on.")
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(help="Attribution window in seconds (default: attribution_window_s)."),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(help="Keep requests whose context has KEY=VALUE (e.g. variant=B)."),
    ] = None,
    estimator: Annotated[
        list[str] | None,
        typer.Option(help="Estimators to run: ips, snips, dm, dr (default: all)."),
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    confidence: Annotated[float, typer.Option(help="Interval coverage.")] = 0.95,
    folds: Annotated[
        int, typer.Option(help="Cross-fitting folds of the DM/DR reward model (1 = none).")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the folds.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Estimate a candidate policy's reward per impression from logged impressions.

    IPS, self-normalised IPS, the direct method and doubly robust, each with
    a seeded bootstrap interval (resampling requests). Nobody is shown the
    candidate policy.

    Policies: random | score:FEATURE | linear:F=W,...[,temperature=T][,draws=N]
    | greedy:LEARNER.json (CtrLearner weights) | thompson:STATS.json
    (BanditStats, ranked by the posterior mean).

    On our impression log the policy reranks the items each request showed
    (features: bias, retrieval_score, ctr, log1p_popularity, freshness,
    in_model, affinity). On an OBD CSV it ranks all items by the features
    in item_context.csv beside it (e.g. linear:item_feature_0=1).
    """
    from offline import ope
    from offline.ope_log import evaluate_policy as run
    from offline.ope_log import read_log
    from offline.ope_policies import parse_policy

    s = get_settings()
    policies = [parse_policy(p) for p in policy]  # bad specs fail before any reading
    estimators = tuple(estimator) if estimator else ope.ESTIMATORS
    unknown = sorted(set(estimators) - set(ope.ESTIMATORS))
    if unknown:
        raise ConfigError(f"--estimator: unknown {unknown}; choose from {list(ope.ESTIMATORS)}")
    path = log if log is not None else s.archive_dir
    fb = read_log(
        path,
        since_ms=parse_time(since, "since"),
        until_ms=parse_time(until, "until"),
        attribution_window_s=window if window is not None else s.attribution_window_s,
        where=_pairs(where),
    )
    results = []
    for p in policies:
        r = run(
            fb,
            p,
            estimators=estimators,
            n_resamples=resamples,
            confidence=confidence,
            seed=seed,
            n_folds=folds,
        )
        results.append({"policy": p.spec, **r.to_dict()})
    summary: dict[str, Any] = {
        "log": str(path),
        "source": fb.source,
        "dropped": fb.dropped,
        "results": results,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    _print(summary)


def _pairs(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--where {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _print(summary: dict[str, Any]) -> None:
    console = Console(width=110)
    console.print(f"[bold]{summary['source']}[/bold] {summary['log']}")
    if summary["dropped"]:
        console.print(
            "dropped: "
            + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in summary["dropped"].items())
        )
    for r in summary["results"]:
        table = Table(title=f"policy {r['policy']}", title_justify="left")
        pct = f"{r['confidence']:.0%}"
        table.add_column("estimator")
        table.add_column("reward / impression", justify="right")
        table.add_column(f"{pct} CI low", justify="right")
        table.add_column(f"{pct} CI high", justify="right")
        table.add_column("vs logged", justify="right")
        for name, e in r["estimates"].items():
            lo, hi = e["ci"]
            lift = e["value"] / r["logged_reward"] - 1 if r["logged_reward"] else float("nan")
            table.add_row(
                name.upper(), f"{e['value']:.5f}", f"{lo:.5f}", f"{hi:.5f}", f"{lift:+.1%}"
            )
        console.print(table)
        w = r["weights"]
        console.print(
            f"{r['n_rounds']:,} impressions, {r['n_groups']:,} resampling units, logged "
            f"reward {r['logged_reward']:.5f}; importance weights: mean {w['mean']:.3f} "
            f"(about 1 when propensities are right), max {w['max']:.1f}, effective "
            f"sample size {w['effective_sample_size']:,.0f}"
        )
        for note in r["notes"]:
            console.print(f"note: {note}")
