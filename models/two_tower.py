"""The two-tower retrieval model: a user tower and an item tower into one cosine space.

User tower: hashed user-bucket embedding, masked mean of the recent items' id
embeddings, and the real-time user features, through an MLP to an L2-normalised vector.
Item tower: item id embedding and item features, through an MLP to the same space.
A user's score for an item is the dot product (cosine) of the two vectors, so retrieval
is a maximum-inner-product search over precomputed item vectors (`index/`).

The item id table is shared by the item tower and the recent-items pooling: an item a
user just clicked and an item we may recommend are the same object, so one row learns
from both roles (rare items get twice the signal), the model is smaller, and each step
updates one sparse table instead of two. The two MLPs keep the towers free to differ.

The user-bucket table starts at zero: a bucket that no training user hashed into
contributes nothing, so a brand-new user is scored from their sequence and features
alone instead of from random noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import TwoTowerConfig
from models.data import PAD

ITEM_INIT_STD = 0.1


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0.0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class TwoTower(nn.Module):
    """User and item towers over hashed users, item ids and dense features."""

    item_dense: Tensor

    def __init__(
        self, config: TwoTowerConfig, n_items: int, user_dense_dim: int, item_dense: Tensor
    ) -> None:
        """`n_items` = len(vocab); `item_dense` [n_items, Fi] is kept as a buffer (saved too)."""
        super().__init__()
        if n_items < 3:
            raise ValueError(f"n_items must count padding, unknown and >= 1 item, got {n_items}")
        if item_dense.ndim != 2 or item_dense.shape[0] != n_items:
            raise ValueError(
                f"item_dense must have shape [{n_items}, Fi], got {tuple(item_dense.shape)}"
            )
        if user_dense_dim < 0:
            raise ValueError(f"user_dense_dim must be >= 0, got {user_dense_dim}")
        self.config = config
        self.n_items = n_items
        self.user_dense_dim = user_dense_dim
        self.item_dense_dim = int(item_dense.shape[1])
        d = config.id_dim
        self.user_emb = nn.Parameter(torch.zeros(config.user_buckets, d))
        item_emb = torch.randn(n_items, d) * ITEM_INIT_STD
        item_emb[PAD] = 0.0
        self.item_emb = nn.Parameter(item_emb)
        self.register_buffer("item_dense", item_dense.detach().to(torch.float32).clone())
        self.user_mlp = _mlp(
            2 * d + user_dense_dim, config.user_hidden, config.embedding_dim, config.dropout
        )
        self.item_mlp = _mlp(
            d + self.item_dense_dim, config.item_hidden, config.embedding_dim, config.dropout
        )

    # --- parameter groups (sparse id tables vs dense MLP weights) ----------------------

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The id tables; their gradients are sparse (only the rows a batch touched)."""
        return [self.user_emb, self.item_emb]

    def dense_parameters(self) -> list[nn.Parameter]:
        """The MLP weights; their gradients are dense."""
        return [*self.user_mlp.parameters(), *self.item_mlp.parameters()]

    # --- towers, in two halves so training can run only the MLPs under autocast ---------

    def user_inputs(self, user_bucket: Tensor, seq: Tensor, user_dense: Tensor) -> Tensor:
        """The user MLP's input [B, 2*id_dim + Fu]: bucket row, mean of seq rows, features.

        Padding (index 0) is left out of the mean; a user without history pools to zeros.
        Lookups stay in float32 and produce sparse gradients.
        """
        u = F.embedding(user_bucket, self.user_emb, sparse=True)
        s = F.embedding_bag(seq, self.item_emb, mode="mean", sparse=True, padding_idx=PAD)
        return torch.cat([u, s, user_dense.to(u.dtype)], dim=1)

    def item_inputs(self, item_idx: Tensor, item_dense: Tensor | None = None) -> Tensor:
        """The item MLP's input [B, id_dim + Fi]; `item_dense` overrides the stored rows."""
        e = F.embedding(item_idx, self.item_emb, sparse=True)
        dense = self.item_dense[item_idx] if item_dense is None else item_dense.to(e.dtype)
        return torch.cat([e, dense], dim=1)

    def user_vectors(self, user_bucket: Tensor, seq: Tensor, user_dense: Tensor) -> Tensor:
        """L2-normalised user vectors [B, D]."""
        h = self.user_mlp(self.user_inputs(user_bucket, seq, user_dense))
        return F.normalize(h.float(), dim=-1)

    def item_vectors(self, item_idx: Tensor, item_dense: Tensor | None = None) -> Tensor:
        """L2-normalised item vectors [B, D] (fresh `item_dense` rows may be passed in)."""
        h = self.item_mlp(self.item_inputs(item_idx, item_dense))
        return F.normalize(h.float(), dim=-1)

    def all_item_vectors(self) -> Tensor:
        """Vectors of every vocabulary row [n_items, D], padding and unknown included."""
        idx = torch.arange(self.n_items, device=self.item_emb.device)
        return self.item_vectors(idx)

    def extra_repr(self) -> str:
        return (
            f"n_items={self.n_items}, user_buckets={self.config.user_buckets}, "
            f"user_dense_dim={self.user_dense_dim}, item_dense_dim={self.item_dense_dim}"
        )


def in_batch_softmax_loss(
    user_vecs: Tensor,
    item_vecs: Tensor,
    target: Tensor,
    temperature: float,
    item_log_q: Tensor | None = None,
) -> Tensor:
    """Mean softmax cross-entropy of each user against the batch's positive items.

    Row i's positive is column i; the other columns are negatives sampled by the data's
    own item frequency, which over-penalises popular items. With `item_log_q` (log
    sampling probability of each column's item) the logits become s_ij/T - log q_j, the
    sampling-bias correction of Yi et al. (RecSys 2019). A column whose item equals row
    i's positive is masked out: it is that user's positive, not a negative.
    Computed in float32 whatever the inputs' precision.
    """
    logits = user_vecs.float() @ item_vecs.float().T / temperature
    if item_log_q is not None:
        logits = logits - item_log_q.float()[None, :]
    same = target[:, None] == target[None, :]
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)
