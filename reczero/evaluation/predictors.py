"""Classical rating predictors: the bar a reasoning recommender has to clear on the same split.

Pure numpy re-implementations of the Surprise algorithms practitioners quote (global / user / item
mean, `BaselineOnly`, `SVD`, `KNNBaseline` with item-item `pearson_baseline` similarity), named in
`PREDICTORS`; `baselines.run_baselines` tunes and scores them.

Ids are encoded to int codes by `encode`; an id absent from the fitted rows gets code -1 and every
predictor falls back for it (user mean -> global mean, item bias -> 0, neighbours -> baseline).
Predictors take and return numpy arrays and never see string ids.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "PREDICTORS",
    "BiasBaseline",
    "BiasedMF",
    "GlobalMean",
    "ItemKNN",
    "ItemMean",
    "Predictor",
    "RatingTriples",
    "TooLargeError",
    "UserMean",
    "encode",
]


@dataclass(frozen=True)
class RatingTriples:
    """Training ratings as parallel arrays of int codes (see `encode`).

    users: [N] int64 codes in [0, n_users).  items: [N] int64 codes in [0, n_items).
    ratings: [N] float64.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        users, items = np.asarray(self.users, np.int64), np.asarray(self.items, np.int64)
        ratings = np.asarray(self.ratings, np.float64)
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "ratings", ratings)
        if not (users.ndim == items.ndim == ratings.ndim == 1 and len(users) == len(items) == len(ratings)):
            raise ValueError(
                f"users, items, ratings must be 1-D of one length, got {users.shape}, {items.shape}, {ratings.shape}"
            )
        if len(ratings) == 0:
            raise ValueError("no training ratings")
        if users.min() < 0 or users.max() >= self.n_users or items.min() < 0 or items.max() >= self.n_items:
            raise ValueError(f"codes must lie in [0, n_users={self.n_users}) and [0, n_items={self.n_items})")
        if not np.isfinite(ratings).all():
            raise ValueError("training ratings must be finite")

    def __len__(self) -> int:
        return len(self.ratings)


def encode(
    train: Sequence[tuple[Hashable, Hashable, float]], targets: Sequence[Sequence[tuple[Hashable, Hashable]]] = ()
) -> tuple[RatingTriples, list[tuple[np.ndarray, np.ndarray]], dict[Hashable, int], dict[Hashable, int]]:
    """Code the ids of `train` (user, item, rating) rows in order of first appearance.

    Returns (train triples, one (users [M], items [M]) code pair per target list, user index, item
    index). Target ids that never occur in `train` get code -1 (cold start).
    """
    user_index: dict[Hashable, int] = {}
    item_index: dict[Hashable, int] = {}
    users = np.array([user_index.setdefault(u, len(user_index)) for u, _, _ in train], dtype=np.int64)
    items = np.array([item_index.setdefault(i, len(item_index)) for _, i, _ in train], dtype=np.int64)
    ratings = np.array([float(r) for _, _, r in train], dtype=np.float64)
    triples = RatingTriples(users, items, ratings, len(user_index), len(item_index))
    coded = [
        (
            np.array([user_index.get(u, -1) for u, _ in pairs], dtype=np.int64),
            np.array([item_index.get(i, -1) for _, i in pairs], dtype=np.int64),
        )
        for pairs in targets
    ]
    return triples, coded, user_index, item_index


@runtime_checkable
class Predictor(Protocol):
    """A rating predictor: `fit` on coded triples, `predict` raw (unclipped) ratings for code pairs."""

    name: str

    def fit(self, train: RatingTriples) -> Predictor: ...

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray: ...


def _lookup(table: np.ndarray, codes: np.ndarray, fallback: float) -> np.ndarray:
    """table[codes] where the code is known (0 <= code < len), `fallback` elsewhere.  [M]"""
    codes = np.asarray(codes, np.int64)
    known = (codes >= 0) & (codes < len(table))
    out = np.full(codes.shape, fallback, dtype=np.float64)
    out[known] = table[codes[known]]
    return out


def _group_mean(codes: np.ndarray, values: np.ndarray, n: int, fallback: float) -> np.ndarray:
    """Mean of `values` per code, `fallback` for codes without values.  [n]"""
    sums = np.bincount(codes, weights=values, minlength=n)
    counts = np.bincount(codes, minlength=n)
    return np.divide(sums, counts, out=np.full(n, fallback), where=counts > 0)


class _Fitted:
    def _check(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise RuntimeError(f"{type(self).__name__} must be fit before predict")


class GlobalMean(_Fitted):
    """The mean training rating for every pair."""

    name = "global_mean"

    def fit(self, train: RatingTriples) -> GlobalMean:
        self.mu_ = float(train.ratings.mean())
        return self

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self._check("mu_")
        return np.full(len(users), self.mu_)


class _SideMean(_Fitted):
    """The mean training rating of the pair's user (`side = "user"`) or item; the global mean when unseen."""

    side = "user"

    def fit(self, train: RatingTriples) -> _SideMean:
        self.mu_ = float(train.ratings.mean())
        codes, n = (train.users, train.n_users) if self.side == "user" else (train.items, train.n_items)
        self.mean_ = _group_mean(codes, train.ratings, n, self.mu_)  # [n_users] or [n_items]
        return self

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self._check("mu_")
        return _lookup(self.mean_, users if self.side == "user" else items, self.mu_)


class UserMean(_SideMean):
    """The user's mean training rating; the global mean for an unseen user."""

    name, side = "user_mean", "user"


class ItemMean(_SideMean):
    """The item's mean training rating; the global mean for an unseen item."""

    name, side = "item_mean", "item"


class BiasBaseline(_Fitted):
    """r_ui = mu + b_u + b_i, fit by alternating closed-form ridge steps (Surprise `BaselineOnly`, ALS).

    Each iteration sets b_i = sum_u (r - mu - b_u) / (reg_item + n_i), then
    b_u = sum_i (r - mu - b_i) / (reg_user + n_u). Defaults are Surprise's (15, 10, 10 iterations).
    Unseen users / items get bias 0.
    """

    name = "bias_baseline"

    def __init__(self, reg_user: float = 15.0, reg_item: float = 10.0, n_iters: int = 10):
        if reg_user < 0 or reg_item < 0 or n_iters < 1:
            raise ValueError(f"need reg_user, reg_item >= 0 and n_iters >= 1, got {reg_user}, {reg_item}, {n_iters}")
        self.reg_user, self.reg_item, self.n_iters = float(reg_user), float(reg_item), int(n_iters)

    def fit(self, train: RatingTriples) -> BiasBaseline:
        u, i, r = train.users, train.items, train.ratings
        mu = float(r.mean())
        user_den = np.bincount(u, minlength=train.n_users) + self.reg_user  # [n_users]
        item_den = np.bincount(i, minlength=train.n_items) + self.reg_item  # [n_items]
        b_user, b_item = np.zeros(train.n_users), np.zeros(train.n_items)
        for _ in range(self.n_iters):
            sums = np.bincount(i, weights=r - mu - b_user[u], minlength=train.n_items)
            b_item = np.divide(sums, item_den, out=np.zeros_like(sums), where=item_den > 0)
            sums = np.bincount(u, weights=r - mu - b_item[i], minlength=train.n_users)
            b_user = np.divide(sums, user_den, out=np.zeros_like(sums), where=user_den > 0)
        self.mu_, self.b_user_, self.b_item_ = mu, b_user, b_item
        return self

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self._check("mu_")
        return self.mu_ + _lookup(self.b_user_, users, 0.0) + _lookup(self.b_item_, items, 0.0)


class BiasedMF(_Fitted):
    """r_ui = mu + b_u + b_i + p_u . q_i trained by SGD on squared error (Surprise `SVD`).

    Same update rules, initialisation (N(0, init_std) factors, zero biases) and per-rating L2 as
    Surprise, but applied to shuffled mini-batches of `batch_size` ratings at once: the gradients of
    a batch are summed (not averaged), so `lr` means what it means in Surprise and batch_size=1 is
    plain SGD. Unseen users / items get zero bias and no interaction term.
    """

    name = "biased_mf"

    def __init__(
        self,
        factors: int = 50,
        lr: float = 0.005,
        reg: float = 0.02,
        epochs: int = 20,
        init_std: float = 0.1,
        batch_size: int = 256,
        seed: int = 0,
    ):
        if factors < 1 or epochs < 1 or batch_size < 1 or lr <= 0 or reg < 0 or init_std < 0:
            raise ValueError("need factors, epochs, batch_size >= 1, lr > 0, reg >= 0, init_std >= 0")
        self.factors, self.lr, self.reg, self.epochs = int(factors), float(lr), float(reg), int(epochs)
        self.init_std, self.batch_size, self.seed = float(init_std), int(batch_size), int(seed)

    def fit(self, train: RatingTriples) -> BiasedMF:
        rng = np.random.default_rng(self.seed)
        f, lr, reg = self.factors, self.lr, self.reg
        p = rng.normal(0.0, self.init_std, (train.n_users, f))  # [n_users, F]
        q = rng.normal(0.0, self.init_std, (train.n_items, f))  # [n_items, F]
        b_user, b_item = np.zeros(train.n_users), np.zeros(train.n_items)
        mu = float(train.ratings.mean())
        flat_p, flat_q, cols = p.reshape(-1), q.reshape(-1), np.arange(f)
        for _ in range(self.epochs):
            order = rng.permutation(len(train))
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                u, i, r = train.users[batch], train.items[batch], train.ratings[batch]  # [B]
                pu, qi = p[u], q[i]  # [B, F]
                err = r - (mu + b_user[u] + b_item[i] + np.einsum("bf,bf->b", pu, qi))  # [B]
                np.add.at(b_user, u, lr * (err - reg * b_user[u]))
                np.add.at(b_item, i, lr * (err - reg * b_item[i]))
                # Row-wise scatter-add through the flat view: np.add.at's fast 1-D path.  [B*F]
                np.add.at(flat_p, (u[:, None] * f + cols).ravel(), (lr * (err[:, None] * qi - reg * pu)).ravel())
                np.add.at(flat_q, (i[:, None] * f + cols).ravel(), (lr * (err[:, None] * pu - reg * qi)).ravel())
        self.mu_, self.b_user_, self.b_item_, self.p_, self.q_ = mu, b_user, b_item, p, q
        return self

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self._check("mu_")
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        known = (users >= 0) & (items >= 0)
        dot = np.zeros(len(users))
        dot[known] = np.einsum("bf,bf->b", self.p_[users[known]], self.q_[items[known]])
        return self.mu_ + _lookup(self.b_user_, users, 0.0) + _lookup(self.b_item_, items, 0.0) + dot


class TooLargeError(ValueError):
    """The dense user x item matrices of `ItemKNN` would exceed its `max_cells`."""


class ItemKNN(_Fitted):
    """Item-item k-NN on baseline residuals (Surprise `KNNBaseline`, item based, `pearson_baseline`).

    Residual z_ui = r_ui - b_ui with b from `BiasBaseline(reg_user, reg_item)`. Similarity of items
    i, j over their common raters: sum z_ui z_uj / sqrt(sum z_ui^2 * sum z_uj^2), shrunk by
    (n - 1) / (n - 1 + shrinkage) and set to 0 below `min_support` common raters. Prediction:
    b_ui + sum_j s_ij z_uj / sum_j s_ij over the k items rated by u most similar to i, counting only
    s_ij > 0; the baseline alone if fewer than `min_k` such neighbours or a cold-start pair.

    Dense in memory: the user x item residuals and rated-mask (float32) must fit in `max_cells`
    cells each (25M by default: ML-1M fits); similarity rows are computed at predict time, only for
    the target items, `block` items at a time.
    """

    name = "item_knn"

    def __init__(
        self,
        k: int = 40,
        min_k: int = 1,
        shrinkage: float = 100.0,
        min_support: int = 1,
        reg_user: float = 15.0,
        reg_item: float = 10.0,
        block: int = 256,
        max_cells: int = 25_000_000,
    ):
        if k < 1 or min_k < 0 or shrinkage < 0 or min_support < 0 or block < 1:
            raise ValueError("need k, block >= 1 and min_k, shrinkage, min_support >= 0")
        self.k, self.min_k, self.shrinkage, self.min_support = int(k), int(min_k), float(shrinkage), int(min_support)
        self.reg_user, self.reg_item, self.block, self.max_cells = reg_user, reg_item, int(block), int(max_cells)

    def fit(self, train: RatingTriples) -> ItemKNN:
        cells = train.n_users * train.n_items
        if cells > self.max_cells:
            raise TooLargeError(
                f"ItemKNN needs dense {train.n_users} x {train.n_items} = {cells:,} cell matrices, above "
                f"max_cells={self.max_cells:,}; raise max_cells if the memory (8 bytes a cell) is there"
            )
        self.baseline_ = BiasBaseline(self.reg_user, self.reg_item).fit(train)
        resid = train.ratings - self.baseline_.predict(train.users, train.items)  # [N]
        self.resid_ = np.zeros((train.n_users, train.n_items), np.float32)  # [U, I], 0 where unrated
        self.rated_ = np.zeros((train.n_users, train.n_items), np.float32)  # [U, I], 1 where rated
        self.resid_[train.users, train.items] = resid
        self.rated_[train.users, train.items] = 1.0
        return self

    def _similarity(self, items: np.ndarray) -> np.ndarray:
        """Shrunk pearson-baseline similarity of `items` [T] to every item.  [T, I]"""
        z, m = self.resid_, self.rated_  # [U, I]
        z_t, m_t = z[:, items], m[:, items]  # [U, T]
        prods = z_t.T @ z  # [T, I]
        sq_t = (z_t * z_t).T @ m  # [T, I]: sum of z_ut^2 over users who also rated j
        sq_j = m_t.T @ (z * z)  # [T, I]
        support = m_t.T @ m  # [T, I]: common raters
        den = np.sqrt(sq_t * sq_j)
        sim = np.divide(prods, den, out=np.zeros_like(prods), where=den > 0)
        sim *= np.divide(support - 1, support - 1 + self.shrinkage, out=np.zeros_like(sim), where=support > 1)
        sim[support < self.min_support] = 0.0
        sim[np.arange(len(items)), items] = 1.0
        return sim

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self._check("baseline_")
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        pred = self.baseline_.predict(users, items)  # [M]
        warm = np.flatnonzero((users >= 0) & (items >= 0))
        target_items = np.unique(items[warm])
        for start in range(0, len(target_items), self.block):
            chunk = target_items[start : start + self.block]
            sim = self._similarity(chunk)  # [T, I]
            chunk_rows = warm[np.isin(items[warm], chunk)]
            for row_start in range(0, len(chunk_rows), 16 * self.block):
                rows = chunk_rows[row_start : row_start + 16 * self.block]
                pred[rows] += self._offsets(sim[np.searchsorted(chunk, items[rows])], users[rows])
        return pred

    def _offsets(self, row_sim: np.ndarray, users: np.ndarray) -> np.ndarray:
        """Weighted mean residual of each target's neighbours; row_sim [R, I] is overwritten.  [R]"""
        row_sim[self.rated_[users] == 0] = -np.inf  # only items the user rated are candidates
        k = min(self.k, row_sim.shape[1])
        nbrs = np.argpartition(-row_sim, k - 1, axis=1)[:, :k]  # [R, k] the k most similar
        s = np.take_along_axis(row_sim, nbrs, axis=1)  # [R, k]
        z = self.resid_[users[:, None], nbrs]  # [R, k]
        w = np.where(s > 0, s, 0.0)  # [R, k]: -inf (unrated) and negative similarities weigh 0
        total = w.sum(axis=1)  # [R]
        enough = ((s > 0).sum(axis=1) >= max(self.min_k, 1)) & (total > 0)
        return np.where(enough, (w * z).sum(axis=1) / np.where(enough, total, 1.0), 0.0)


PREDICTORS: dict[str, type] = {
    cls.name: cls for cls in (GlobalMean, UserMean, ItemMean, BiasBaseline, BiasedMF, ItemKNN)
}
