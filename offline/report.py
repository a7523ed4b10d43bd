"""The retrain's human-readable outputs: a markdown report, a PNG plot and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    names = list(metrics)
    keys = [k for k in next(iter(metrics.values())) if k != "users"]
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        row = [f"{metrics[n].get(k, float('nan')):.4f}" for n in names]
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_plot(
    path: Path, metrics: dict[str, dict[str, float]], history: list[dict[str, Any]]
) -> None:
    """Recall@K by K for each recommender, and the training curves."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in metrics.items():
        ks = sorted(int(k.split("@")[1]) for k in m if k.startswith("recall@"))
        ax1.plot(ks, [m[f"recall@{k}"] for k in ks], marker="o", label=name)
    ax1.set_xlabel("K")
    ax1.set_ylabel("Recall@K")
    ax1.set_title("Holdout recall by cut-off")
    ax1.legend()
    ax1.grid(alpha=0.3)
    epochs = [h["epoch"] for h in history]
    ax2.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    if any(h.get("valid_loss") is not None for h in history):
        ax2.plot(epochs, [h.get("valid_loss") for h in history], marker="o", label="valid loss")
    ax2.set_xlabel("epoch")
    ax2.set_title("Training curves")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(path: Path, summary: dict[str, Any]) -> None:
    m = summary["metrics"]
    gate = summary["gate"]
    d = summary["dataset"]
    text = f"""# Retrain report {summary.get("version") or "(not committed)"}

- Data window: {_fmt_ms(summary["window"]["since_ms"])} to {_fmt_ms(summary["window"]["until_ms"])}
- Holdout from: {_fmt_ms(summary["dataset"]["split_ms"])}
- Examples: {d["train_examples"]:,} train, {d["test_users"]:,} test users,
  {d["vocab_items"]:,} items in the vocabulary
- Training: {summary["training"]["epochs"]} epochs (best {summary["training"]["best_epoch"]}),
  {summary["training"]["seconds"]:.1f} s on {summary["training"]["device"]}
- Index: {summary.get("index", {}).get("kind", "-")}, recall@100 vs exact
  {summary.get("index", {}).get("recall_at_100", float("nan")):.4f}

## Holdout metrics

{metrics_table(m)}

## Gate

{gate["decision"]}: {gate["reason"]}

![metrics](report.png)
"""
    path.write_text(text)


def write_card(path: Path, summary: dict[str, Any]) -> None:
    m = summary["metrics"]
    metric = summary["gate"]["metric"]
    lines = [
        f"- {name}: {metric} = {vals.get(metric, float('nan')):.4f}" for name, vals in m.items()
    ]
    text = f"""# Model card: two-tower retrieval {summary.get("version", "")}

## Intended use
Candidate retrieval for streamrec serving: given a user's recent items and real-time
features, find a few hundred items worth reranking. Not a final ranking; not for
decisions about people beyond what to show them.

## Data
Events from {_fmt_ms(summary["window"]["since_ms"])} to {_fmt_ms(summary["window"]["until_ms"])}:
{summary["dataset"]["events"]:,} events, {summary["dataset"]["users"]:,} users,
{summary["dataset"]["items"]:,} items. Targets: the first {", ".join(summary["positive_events"])}
of each user-item pair; user context as of just before each event (point in time).

## Metrics (time holdout, seen items excluded)
{chr(10).join(lines)}

Full table in report.md; seed {summary["seed"]}; code {summary["code_version"]}.

## Limitations
- Items first seen after the holdout cut are unknown to the model (served by exploration).
- Users are hashed into buckets; rare collisions share an embedding.
- Trained on logged behaviour, which reflects what was shown (popularity bias is
  corrected in the loss with logQ, not removed).
"""
    path.write_text(text)
