"""Training the two-tower model: in-batch softmax, logQ correction, early stopping.

Each step scores every user of a batch against every positive item of the batch
(in-batch negatives), with a temperature and the sampling-bias (logQ) correction. The id
tables get sparse gradients and SparseAdam, so a step costs in proportion to the rows it
touched, not to the catalogue or the number of user buckets; the MLPs use AdamW.
Validation loss on the latest slice of examples decides when to stop, and the best
epoch's weights are the ones returned.

Seeded end to end: torch's RNG (forked, so the caller's state is untouched) for weight
init and dropout, a numpy Generator for the shuffles. On CPU the same seed and data give
bit-identical weights. On CUDA the towers' MLPs run under autocast (bf16 where the GPU
has it, else fp16 with a GradScaler); lookups and the loss stay in float32.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.config import TwoTowerConfig
from models.data import Examples, ItemTable
from models.two_tower import TwoTower, in_batch_softmax_loss
from streamrec.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a training run produced: the best model (CPU, eval mode) and its history."""

    model: TwoTower
    history: list[dict[str, Any]]
    best_epoch: int  # 1-based; the epoch whose weights `model` holds
    device: str
    stopped_early: bool
    log_q: np.ndarray = field(repr=False)  # float32 [n_items], used by the logQ correction


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    return torch.device(name)


def sampling_log_q(target: np.ndarray, n_items: int) -> np.ndarray:
    """log of each item's frequency as a training target (float32 [n_items]).

    That frequency is the probability that an in-batch negative is that item. Items never
    seen as a target (they can still appear as validation targets) count as seen once.
    """
    counts = np.bincount(target, minlength=n_items)[:n_items].astype(np.float64)
    q = np.maximum(counts, 1.0) / max(int(target.shape[0]), 1)
    return np.log(q).astype(np.float32)


def _check_inputs(ex: Examples, items: ItemTable, config: TwoTowerConfig, name: str) -> None:
    if len(ex) < 2:
        raise DataError(f"{name}: need at least 2 examples, got {len(ex)}.")
    if int(ex.user_bucket.max()) >= config.user_buckets:
        raise DataError(
            f"{name}.user_bucket: bucket {int(ex.user_bucket.max())} >= user_buckets "
            f"({config.user_buckets}); hash with the config's user_buckets."
        )
    for fld, arr in (("seq", ex.seq), ("target", ex.target)):
        if int(arr.max()) >= items.n_items:
            raise DataError(
                f"{name}.{fld}: item index {int(arr.max())} >= len(vocab) ({items.n_items})."
            )


def _tensors(ex: Examples, device: torch.device) -> tuple[torch.Tensor, ...]:
    def conv(a: np.ndarray) -> torch.Tensor:
        # torch warns on read-only arrays (e.g. memory-mapped); copy those.
        return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)

    return tuple(conv(a) for a in (ex.user_bucket, ex.seq, ex.user_dense, ex.target))


class _Stepper:
    """Forward + loss for one batch, with autocast and loss scaling on CUDA."""

    def __init__(self, model: TwoTower, config: TwoTowerConfig, device: torch.device) -> None:
        self.model, self.config, self.device = model, config, device
        self.amp_dtype: torch.dtype | None = None
        if device.type == "cuda" and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def loss(self, batch: tuple[torch.Tensor, ...], log_q: torch.Tensor | None) -> torch.Tensor:
        ub, seq, ud, tgt = batch
        m = self.model
        u_in, i_in = m.user_inputs(ub, seq, ud), m.item_inputs(tgt)
        with self._autocast():
            u_h, i_h = m.user_mlp(u_in), m.item_mlp(i_in)
        u = torch.nn.functional.normalize(u_h.float(), dim=-1)
        i = torch.nn.functional.normalize(i_h.float(), dim=-1)
        lq = None if log_q is None else log_q[tgt]
        return in_batch_softmax_loss(u, i, tgt, self.config.temperature, lq)


def _batches(
    data: tuple[torch.Tensor, ...], order: torch.Tensor, size: int, drop_last: bool
) -> Iterator[tuple[torch.Tensor, ...]]:
    n = int(order.shape[0])
    stop = n - n % size if drop_last and n >= size else n
    for start in range(0, stop, size):
        idx = order[start : start + size]
        if idx.shape[0] >= 2:  # a batch of one has no negatives
            yield tuple(t[idx] for t in data)


@torch.no_grad()
def validation_loss(
    model: TwoTower,
    examples: Examples,
    log_q: np.ndarray | None,
    config: TwoTowerConfig,
    device: torch.device | None = None,
) -> float:
    """Mean in-batch loss over `examples` in their stored order (deterministic).

    Uses full batches only (when there is at least one), since the in-batch loss grows
    with the number of negatives and a short last batch would flatter the mean.
    """
    dev = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    stepper = _Stepper(model, config, dev)
    data = _tensors(examples, dev)
    lq = None if log_q is None or not config.logq_correction else torch.from_numpy(log_q).to(dev)
    order = torch.arange(len(examples), device=dev)
    total, count = torch.zeros((), device=dev), 0
    for batch in _batches(data, order, config.batch_size, drop_last=True):
        total += stepper.loss(batch, lq)
        count += 1
    model.train(was_training)
    return float(total) / max(count, 1)


def train_two_tower(
    examples: Examples,
    items: ItemTable,
    config: TwoTowerConfig,
    valid: Examples | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train a two-tower model on `examples`; stop early on `valid` (or the latest slice).

    Without `valid`, the latest `config.validation_fraction` of `examples` by time is held
    out for early stopping (0 = train `max_epochs` with no validation). `progress`, when
    given, receives a dict every `config.progress_every` steps: event="step", epoch, step,
    steps_per_epoch, train_loss (running mean), examples_per_s; and after every epoch:
    event="epoch", epoch, step (global), train_loss, valid_loss (None without validation),
    epoch_s (training pass), valid_s, examples_per_s, best_epoch. `history` holds the
    epoch dicts without event/step/best_epoch.
    """
    floor = min(64, config.batch_size)
    if (
        config.min_steps_per_epoch
        and len(examples) // config.batch_size < config.min_steps_per_epoch
    ):
        smaller = max(floor, len(examples) // config.min_steps_per_epoch)
        if smaller < config.batch_size:
            logger.info(
                "train: %d examples; batch %d -> %d for %d steps per epoch",
                len(examples),
                config.batch_size,
                smaller,
                config.min_steps_per_epoch,
            )
            config = config.model_copy(update={"batch_size": smaller})
    if valid is None and config.validation_fraction > 0.0:
        examples, valid = examples.split_by_time(config.validation_fraction)
    _check_inputs(examples, items, config, "examples")
    if valid is not None:
        _check_inputs(valid, items, config, "valid")
        if valid.user_dense_dim != examples.user_dense_dim:
            raise DataError(
                f"valid.user_dense: {valid.user_dense_dim} features, "
                f"training examples have {examples.user_dense_dim}."
            )
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(config.seed)
            return _train(examples, items, config, valid, progress, device)
    finally:
        torch.set_num_threads(threads)


def _train(
    examples: Examples,
    items: ItemTable,
    config: TwoTowerConfig,
    valid: Examples | None,
    progress: ProgressFn | None,
    device: torch.device,
) -> TrainResult:
    n = len(examples)
    log_q_np = sampling_log_q(examples.target, items.n_items)
    model = TwoTower(
        config, items.n_items, examples.user_dense_dim, torch.from_numpy(items.dense.copy())
    ).to(device)
    model.train()
    sparse_opt = torch.optim.SparseAdam(model.sparse_parameters(), lr=config.embedding_lr)
    dense_opt = torch.optim.AdamW(
        model.dense_parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    stepper = _Stepper(model, config, device)
    log_q = torch.from_numpy(log_q_np).to(device) if config.logq_correction else None
    data = _tensors(examples, device)
    rng = np.random.default_rng(config.seed)
    steps_per_epoch = max(1, -(-n // config.batch_size))
    logger.info(
        "training two-tower on %d examples (%d validation), %d items, device %s",
        n, 0 if valid is None else len(valid), items.n_items, device,
    )  # fmt: skip

    history: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state, bad_epochs = float("inf"), 0, None, 0
    stopped_early, global_step = False, 0
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        order = torch.from_numpy(rng.permutation(n)).to(device)
        running, steps = torch.zeros((), device=device), 0
        for batch in _batches(data, order, config.batch_size, drop_last=False):
            loss = stepper.loss(batch, log_q)
            sparse_opt.zero_grad(set_to_none=True)
            dense_opt.zero_grad(set_to_none=True)
            if stepper.scaler is not None:
                stepper.scaler.scale(loss).backward()
                stepper.scaler.step(sparse_opt)
                stepper.scaler.step(dense_opt)
                stepper.scaler.update()
            else:
                loss.backward()
                sparse_opt.step()
                dense_opt.step()
            running += loss.detach()
            steps += 1
            global_step += 1
            every = config.progress_every
            if progress is not None and every and steps % every == 0:
                elapsed = time.perf_counter() - t0
                progress({
                    "event": "step", "epoch": epoch, "step": steps,
                    "steps_per_epoch": steps_per_epoch, "train_loss": float(running) / steps,
                    "examples_per_s": steps * config.batch_size / elapsed,
                })  # fmt: skip
        train_loss = float(running) / max(steps, 1)  # float() syncs CUDA before timing
        epoch_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        valid_loss = (
            None if valid is None else validation_loss(model, valid, log_q_np, config, device)
        )
        model.train()
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid_loss": valid_loss,
            "epoch_s": epoch_s,
            "valid_s": time.perf_counter() - t1,
            "examples_per_s": n / epoch_s if epoch_s > 0 else float("inf"),
        }
        history.append(record)
        logger.info(
            "epoch %d: train_loss %.4f valid_loss %s, %.1f s (%.0f examples/s)",
            epoch, train_loss, "n/a" if valid_loss is None else f"{valid_loss:.4f}",
            epoch_s, record["examples_per_s"],
        )  # fmt: skip

        if valid_loss is None:
            best_epoch = epoch
        elif valid_loss < best_loss - config.min_delta:
            best_loss, best_epoch, bad_epochs = valid_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        if progress is not None:
            progress({"event": "epoch", "step": global_step, "best_epoch": best_epoch, **record})
        if bad_epochs >= config.patience:
            stopped_early = epoch < config.max_epochs
            logger.info("early stop after epoch %d; best epoch %d", epoch, best_epoch)
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        device=str(device),
        stopped_early=stopped_early,
        log_q=log_q_np,
    )
