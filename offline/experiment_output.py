"""The experiment report as files: markdown with a plain verdict, and a PNG of each
variant's CTR and conversion with their intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from offline.experiment_report import ExperimentResult, Rate


def _pct(r: Rate) -> str:
    return f"{r.value:.2%} [{r.ci_low:.2%}, {r.ci_high:.2%}]"


def render_markdown(result: ExperimentResult, plot_name: str | None = "report.png") -> str:
    """The report as markdown (the plot linked by `plot_name`)."""
    from offline.report import _fmt_ms

    r = result
    lines = [
        f"# Experiment `{r.experiment}`",
        "",
        f"**Verdict: {r.verdict}**",
        "",
        f"Window: {_fmt_ms(r.since_ms)} to {_fmt_ms(r.until_ms)}. Control: `{r.control}`. "
        f"Decided on: {r.metric}. Intervals: 1 - alpha, user-clustered (delta method).",
        "",
        "| variant | share | users | impressions | clicks | CTR [CI] | conversions | "
        "conversion [CI] |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for s in r.variants:
        lines.append(
            f"| {s.name} | {s.share:.0%} | {s.users:,} | {s.impressions:,} | {s.clicks:,} | "
            f"{_pct(s.ctr)} | {s.conversions:,} | {_pct(s.conversion)} |"
        )
    lines += [
        "",
        f"## Against control `{r.control}` (two-proportion z-test, user-clustered)",
        "",
        "Alpha and the difference intervals are Bonferroni-corrected for the number of treatments.",
        "",
        "| variant | metric | difference [CI] | relative | z | p | alpha | significant |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for c in r.comparisons:
        lines.append(
            f"| {c.variant} | {c.metric} | {c.diff:+.2%} [{c.diff_ci[0]:+.2%}, "
            f"{c.diff_ci[1]:+.2%}] | {c.relative:+.1%} | {c.z:.2f} | {c.p_value:.3g} | "
            f"{c.alpha:.3g} | {'yes' if c.significant else 'no'} |"
        )
    srm = r.srm
    lines += [
        "",
        "## Sample ratio",
        "",
        f"Chi-square {srm.chi2:.2f}, p = {srm.p_value:.3g} "
        f"({'MISMATCH' if srm.mismatch else 'ok'}). Users per variant: "
        + ", ".join(f"{k} {v:,} (expected {srm.expected[k]:,.0f})" for k, v in srm.observed.items())
        + ".",
    ]
    if srm.crossover_users:
        lines.append(f"\n{srm.crossover_users:,} user(s) were logged under more than one variant.")
    if srm.unknown_variants:
        lines.append(f"\nImpressions naming variants not in the config: {srm.unknown_variants}.")
    if plot_name:
        lines += ["", f"![rates by variant]({plot_name})"]
    return "\n".join(lines) + "\n"


def write_plot(path: Path, result: ExperimentResult) -> None:
    """CTR and conversion per variant with their intervals, and users vs configured share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in result.variants]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, metric in zip(axes[:2], ("ctr", "conversion"), strict=True):
        rates = [getattr(s, metric) for s in result.variants]
        vals = np.array([q.value for q in rates])
        err = np.array([[q.value - q.ci_low for q in rates], [q.ci_high - q.value for q in rates]])
        colours = ["#888888" if n == result.control else "#1f77b4" for n in names]
        ax.bar(x, vals, yerr=err, capsize=6, color=colours)
        ax.set_xticks(x, names)
        ax.set_title(f"{'CTR' if metric == 'ctr' else 'Conversion rate'} (grey = control)")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(axis="y", alpha=0.3)
    srm = result.srm
    total = max(1, sum(srm.observed.values()))
    axes[2].bar(x - 0.2, [srm.observed[n] / total for n in names], 0.4, label="observed")
    axes[2].bar(x + 0.2, [s.share for s in result.variants], 0.4, label="configured")
    axes[2].set_xticks(x, names)
    axes[2].set_title(f"Users per variant (SRM p = {srm.p_value:.2g})")
    axes[2].legend()
    fig.suptitle(f"{result.experiment}: {result.verdict}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: ExperimentResult, out_dir: Path) -> dict[str, Path]:
    """report.md, report.png and result.json under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "plot": out_dir / "report.png",
        "json": out_dir / "result.json",
    }
    write_plot(paths["plot"], result)
    paths["markdown"].write_text(render_markdown(result, paths["plot"].name))
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return paths
