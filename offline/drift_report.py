"""The drift report: markdown and a CDF plot per drifted feature, written next to each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from offline.drift import DriftConfig, DriftResult


def render_markdown(
    result: DriftResult, cfg: DriftConfig, plot_name: str | None = "report.png"
) -> str:
    from offline.report import _fmt_ms

    r = result
    lines = [
        f"# Drift of `{r.version}`",
        "",
        f"**{r.decision.upper()}**: {r.reason}",
        "",
        f"Traffic {_fmt_ms(r.since_ms)} to {_fmt_ms(r.until_ms)} ({r.rows:,} sampled moments) "
        f"against the last {cfg.window_hours:g} h of the model's training window. PSI threshold "
        f"{cfg.psi_threshold}"
        + (f", KS threshold {cfg.ks_threshold}" if cfg.ks_threshold else "")
        + f"; on drift: {cfg.on_drift}.",
    ]
    if r.trigger_message:
        lines += ["", f"Action: {r.trigger_message}."]
    lines += [
        "",
        "| feature | PSI | KS | reference mean | current mean | status |",
        "|---|---:|---:|---:|---:|---|",
    ]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    for f in r.features:
        status = ("DRIFTED" if f.drifted else "ok") + ("" if f.counted else " (ignored)")
        lines.append(
            f"| {f.feature} | {f.psi:.3f} | {num(f.ks)} | {num(f.ref_mean)} | "
            f"{num(f.cur_mean)} | {status} |"
        )
    if plot_name:
        lines += ["", f"![drift by feature]({plot_name})"]
    return "\n".join(lines) + "\n"


def write_plot(path: Path, result: DriftResult, cfg: DriftConfig, top: int = 3) -> None:
    """PSI per feature against the threshold, and the CDFs of the most drifted features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feats = result.features
    shown = [f for f in feats if f.feature in result.curves][:top]
    fig, axes = plt.subplots(
        1, 1 + len(shown), figsize=(5 + 4 * len(shown), max(4, 0.25 * len(feats)))
    )
    axes = np.atleast_1d(axes)
    names = [f.feature for f in feats][::-1]
    colours = ["#d62728" if f.drifted else "#1f77b4" for f in feats][::-1]
    axes[0].barh(names, [f.psi for f in feats][::-1], color=colours)
    axes[0].axvline(cfg.psi_threshold, color="k", linestyle="--", label="threshold")
    axes[0].set_xlabel("PSI")
    axes[0].set_title("PSI by feature (red = drifted)")
    axes[0].tick_params(axis="y", labelsize=7)
    axes[0].legend()
    for ax, f in zip(axes[1:], shown, strict=True):
        x, ref_cdf, cur_cdf = result.curves[f.feature]
        ax.step(x, ref_cdf, where="post", label="reference")
        ax.step(x, cur_cdf, where="post", label="current")
        ax.set_title(f"{f.feature}\nPSI {f.psi:.2f}, KS {f.ks or 0:.2f}", fontsize=9)
        ax.set_ylabel("CDF")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: DriftResult, cfg: DriftConfig, out_dir: Path) -> dict[str, Path]:
    """report.md, report.png and result.json under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "plot": out_dir / "report.png",
        "json": out_dir / "result.json",
    }
    write_plot(paths["plot"], result, cfg)
    paths["markdown"].write_text(render_markdown(result, cfg, paths["plot"].name))
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return paths
