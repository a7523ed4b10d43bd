"""The quality side of the CLI: A/B experiment reports and drift monitoring.

Registered on the main app by `streamrec.cli` as `streamrec experiment …` and
`streamrec drift …`; heavy imports happen inside each command.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from streamrec.cli_batch import parse_time
from streamrec.errors import ConfigError, StreamrecError
from streamrec.settings import get_settings

if TYPE_CHECKING:
    from offline.drift import DriftResult

experiment_app = typer.Typer(help="A/B experiments: list, report, simulate.", no_args_is_help=True)
drift_app = typer.Typer(help="Drift of traffic against the serving model.", no_args_is_help=True)
log = logging.getLogger("streamrec.drift")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Experiments TOML (default online/experiments.toml)."),
]
DriftConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Drift TOML (default offline/drift.toml).")
]


@experiment_app.command("list")
def experiment_list(config: ConfigOpt = None) -> None:
    """Every declared experiment, its variants and whether it runs now."""
    from online.experiments import load_experiments

    cfg = load_experiments(config)
    if not cfg.experiments:
        typer.echo("no experiments declared (see the example in online/experiments.toml)")
    now = int(time.time() * 1000)
    for e in cfg.experiments:
        arms = ", ".join(
            f"{v.name} {v.share:.0%}" + (f" {v.overrides()}" if v.overrides() else "")
            for v in e.variants
        )
        typer.echo(f"{e.name}: {'running' if e.is_active(now) else 'not running'}; {arms}")


@experiment_app.command("report")
def experiment_report(
    name: Annotated[str, typer.Argument(help="Experiment name (see `streamrec experiment list`).")],
    since: Annotated[str | None, typer.Option(help="Start (ISO 8601 or epoch ms).")] = None,
    until: Annotated[str | None, typer.Option(help="End, exclusive.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    attribution_s: Annotated[
        int, typer.Option(help="Seconds after an impression a click or conversion counts.")
    ] = 1800,
    config: ConfigOpt = None,
) -> None:
    """Per-variant CTR and conversion with intervals, tests vs control, SRM, a verdict."""
    from offline.experiment_output import write_outputs
    from offline.experiment_report import experiment_report as run
    from online.experiments import load_experiments

    s = get_settings()
    exp = load_experiments(config).get(name)
    result = run(
        s.archive_dir, exp, parse_time(since, "since"), parse_time(until, "until"), attribution_s
    )
    paths = write_outputs(result, out or s.data_dir / "experiments" / name)
    for v in result.variants:
        typer.echo(
            f"{v.name:>12}: {v.users:>8,} users {v.impressions:>10,} impressions  "
            f"CTR {v.ctr.value:.2%} [{v.ctr.ci_low:.2%}, {v.ctr.ci_high:.2%}]  "
            f"conversion {v.conversion.value:.2%}"
        )
    typer.echo(f"verdict: {result.verdict}")
    typer.echo(f"report: {paths['markdown']}  plot: {paths['plot']}")


def _pairs(values: list[str] | None, what: str) -> dict[str, float]:
    out = {}
    for item in values or []:
        key, sep, val = item.partition("=")
        try:
            out[key] = float(val)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--{what}: expected VARIANT=NUMBER, got {item!r}")
    return out


@experiment_app.command("simulate")
def experiment_simulate(
    name: Annotated[str, typer.Argument(help="A declared experiment to simulate.")],
    sessions: Annotated[int, typer.Option(help="Sessions (slates of 10 impressions).")] = 20_000,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 5000,
    items: Annotated[int, typer.Option(help="Simulated items.")] = 1000,
    days: Annotated[float, typer.Option(help="Days of traffic, ending now.")] = 7.0,
    lift: Annotated[
        list[str] | None, typer.Option(help="VARIANT=0.02 adds 2 CTR points to a variant.")
    ] = None,
    lost: Annotated[
        list[str] | None, typer.Option(help="VARIANT=0.05 drops 5% of its users (plants SRM).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the world and the traffic.")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Write a planted experiment's impressions, clicks and conversions into the archive."""
    from offline.archive import write_events
    from offline.experiment_sim import simulate_experiment
    from online.experiments import load_experiments
    from streamrec.simulation import World, WorldParams

    s = get_settings()
    exp = load_experiments(config).get(name)
    span = int(days * 86_400_000)
    start = int(time.time() * 1000) - span
    world = World(WorldParams(users=users, items=items, seed=seed))
    events = simulate_experiment(
        world,
        exp,
        sessions=sessions,
        start_ms=start,
        span_ms=span,
        ctr_lift=_pairs(lift, "lift"),
        lost_users=_pairs(lost, "lost"),
        seed=seed,
    )
    n = write_events(s.archive_dir, events, f"exp-{name}")
    typer.echo(f"wrote {n:,} events of experiment {name} over {days:g} days to {s.archive_dir}")


def _print_drift(result: DriftResult) -> None:
    top = ", ".join(f"{f.feature} {f.psi:.3f}" for f in result.features[:5])
    typer.echo(f"{result.version}: {result.decision} ({result.reason}); {result.rows:,} rows")
    typer.echo(f"highest PSI: {top}")
    if result.trigger_message:
        typer.echo(f"action: {result.trigger_message}")


@drift_app.command("report")
def drift_report(
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    now: Annotated[str | None, typer.Option(help="End of the window (default: now).")] = None,
    config: DriftConfigOpt = None,
) -> None:
    """Compare recent traffic with the serving model's reference; write report.md + PNG.

    Never retrains: a due retrain is reported (`streamrec drift watch` acts on it).
    """
    from models.registry import Registry
    from offline.drift import check, load_drift_config
    from offline.drift_report import write_outputs

    s = get_settings()
    cfg = load_drift_config(config)
    result = check(s.archive_dir, Registry(s.registry_dir), cfg, now_ms=parse_time(now, "now"))
    paths = write_outputs(result, cfg, out or s.data_dir / "drift")
    _print_drift(result)
    typer.echo(f"report: {paths['markdown']}  plot: {paths['plot']}")


@drift_app.command("watch")
def drift_watch(
    interval: Annotated[float, typer.Option(min=1.0, help="Seconds between checks.")] = 3600.0,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve the streamrec_drift_* gauges on this port.")
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option(help="Address the metrics server binds (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    out: Annotated[Path | None, typer.Option(help="Folder of the latest report.")] = None,
    checks: Annotated[int, typer.Option(help="Stop after this many checks; 0 = never.")] = 0,
    config: DriftConfigOpt = None,
) -> None:
    """Check drift every INTERVAL seconds, export gauges, and retrain or recommend on drift."""
    from models.registry import Registry
    from offline.drift import check, load_drift_config
    from offline.drift_actions import retrain_trigger
    from offline.drift_report import write_outputs

    s = get_settings()
    cfg = load_drift_config(config)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_addr)
    folder = out or s.data_dir / "drift"
    trigger = retrain_trigger(s, cfg) if cfg.on_drift == "retrain" else None
    done = 0
    while True:
        try:
            result = check(
                s.archive_dir,
                Registry(s.registry_dir),
                cfg,
                trigger=trigger,
                state_file=folder / "state.json",
            )
            write_outputs(result, cfg, folder)
            _print_drift(result)
        except ConfigError:
            raise
        except StreamrecError as exc:  # no model yet, empty archive: try again next time
            log.error("drift check failed: %s", exc.message)
        done += 1
        if checks and done >= checks:
            return
        time.sleep(interval)
