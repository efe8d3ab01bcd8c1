"""Classical baselines: hand-computed means, planted structure recovered, selection on validation only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reczero.evaluation.baselines import BaselineResult, format_table, run_baselines
from reczero.evaluation.predictors import (
    BiasBaseline,
    BiasedMF,
    GlobalMean,
    ItemKNN,
    ItemMean,
    Predictor,
    RatingTriples,
    UserMean,
    encode,
)

# a rated x 5, y 3; b rated x 2.  mu = 10/3, user means a 4, b 2, item means x 3.5, y 3.
TINY = [("a", "x", 5.0), ("a", "y", 3.0), ("b", "x", 2.0)]
TINY_TARGETS = [("a", "y"), ("b", "y"), ("c", "x"), ("a", "z"), ("c", "z")]  # c and z are cold


def _tiny():
    triples, (codes,), users, items = encode(TINY, [TINY_TARGETS])
    return triples, codes, users, items


def _rmse(pred, truth):
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def _synthetic(n_users=150, n_items=100, density=0.3, noise=0.1, rank=0, strength=0.0, seed=0):
    """r = 3 + b_u + b_i (+ strength * p_u . q_i / sqrt(rank)) + noise; 80/20 random train/test.

    Returns (train triples, test users, test items, test ratings, planted b_user, planted b_item).
    """
    rng = np.random.default_rng(seed)
    b_user, b_item = rng.normal(0, 0.5, n_users), rng.normal(0, 0.4, n_items)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    ratings = 3.0 + b_user[users] + b_item[items] + noise * rng.normal(size=len(users))
    if rank:
        p, q = rng.normal(size=(n_users, rank)), rng.normal(size=(n_items, rank))
        ratings += strength * np.einsum("nr,nr->n", p[users], q[items]) / math.sqrt(rank)
    test = rng.random(len(users)) < 0.2
    train = RatingTriples(users[~test], items[~test], ratings[~test], n_users, n_items)
    return train, users[test], items[test], ratings[test], b_user, b_item


def _rows(users, items, ratings):
    return [(f"u{u}", f"i{i}", float(r)) for u, i, r in zip(users, items, ratings)]


def test_encode_codes_in_first_seen_order_and_cold_ids_get_minus_one():
    triples, codes, users, items = _tiny()
    assert users == {"a": 0, "b": 1} and items == {"x": 0, "y": 1}
    assert (triples.n_users, triples.n_items, len(triples)) == (2, 2, 3)
    np.testing.assert_array_equal(codes[0], [0, 1, -1, 0, -1])
    np.testing.assert_array_equal(codes[1], [1, 1, 0, -1, -1])


def test_rating_triples_validates_codes():
    with pytest.raises(ValueError, match="codes must lie"):
        RatingTriples(np.array([0, 2]), np.array([0, 0]), np.array([1.0, 2.0]), n_users=2, n_items=1)
    with pytest.raises(ValueError, match="no training ratings"):
        encode([])


def test_means_by_hand_with_cold_start_fallbacks():
    triples, codes, _, _ = _tiny()
    mu = 10 / 3
    np.testing.assert_allclose(GlobalMean().fit(triples).predict(*codes), [mu] * 5)
    np.testing.assert_allclose(UserMean().fit(triples).predict(*codes), [4.0, 2.0, mu, 4.0, mu])
    np.testing.assert_allclose(ItemMean().fit(triples).predict(*codes), [3.0, 3.0, 3.5, mu, mu])


def test_bias_baseline_one_als_step_by_hand():
    # items first: b_x = ((5 - mu) + (2 - mu)) / 2 = 1/6, b_y = 3 - mu = -1/3;
    # then users: b_a = ((5 - mu - 1/6) + (3 - mu + 1/3)) / 2 = 3/4, b_b = 2 - mu - 1/6 = -3/2.
    triples, codes, _, _ = _tiny()
    model = BiasBaseline(reg_user=0.0, reg_item=0.0, n_iters=1).fit(triples)
    mu = 10 / 3
    np.testing.assert_allclose(model.b_item_, [1 / 6, -1 / 3])
    np.testing.assert_allclose(model.b_user_, [3 / 4, -3 / 2])
    np.testing.assert_allclose(
        model.predict(*codes), [mu + 3 / 4 - 1 / 3, mu - 3 / 2 - 1 / 3, mu + 1 / 6, mu + 3 / 4, mu]
    )
    # regularisation shrinks towards 0: b_y = (3 - mu) / (1 + 2)
    assert BiasBaseline(reg_user=0.0, reg_item=2.0, n_iters=1).fit(triples).b_item_[1] == pytest.approx(-1 / 9)


def test_bias_baseline_converges_to_the_ridge_normal_equations():
    train, _, _, _, _, _ = _synthetic(n_users=50, n_items=30, density=0.3, rank=2, strength=0.5, seed=4)
    model = BiasBaseline(reg_user=3.0, reg_item=2.0, n_iters=200).fit(train)
    resid = train.ratings - model.predict(train.users, train.items)
    # Each bias is the regularised mean of its residuals: sum(resid) = reg * b, per item and per user.
    np.testing.assert_allclose(np.bincount(train.items, resid, train.n_items), 2.0 * model.b_item_, atol=1e-8)
    np.testing.assert_allclose(np.bincount(train.users, resid, train.n_users), 3.0 * model.b_user_, atol=1e-8)


def test_every_predictor_handles_cold_pairs_and_satisfies_the_protocol():
    triples, codes, _, _ = _tiny()
    for model in (GlobalMean(), UserMean(), ItemMean(), BiasBaseline(), BiasedMF(factors=2, epochs=2), ItemKNN(k=2)):
        assert isinstance(model, Predictor)
        pred = model.fit(triples).predict(*codes)
        assert pred.shape == (5,) and np.isfinite(pred).all()
        assert model.predict(np.array([-1]), np.array([-1]))[0] == pytest.approx(10 / 3)
    with pytest.raises(RuntimeError, match="fit before predict"):
        BiasedMF().predict(np.array([0]), np.array([0]))


def test_bias_baseline_recovers_planted_biases():
    train, test_u, test_i, test_r, b_user, b_item = _synthetic(noise=0.1)
    model = BiasBaseline(reg_user=1.0, reg_item=1.0, n_iters=20).fit(train)
    assert np.corrcoef(model.b_user_, b_user)[0, 1] > 0.95
    assert np.corrcoef(model.b_item_, b_item)[0, 1] > 0.95
    noise_mae = 0.1 * math.sqrt(2 / math.pi)  # E|N(0, 0.1)|
    assert np.abs(model.predict(test_u, test_i) - test_r).mean() < 1.5 * noise_mae


def test_mf_and_knn_exploit_a_planted_low_rank_interaction():
    train, test_u, test_i, test_r, _, _ = _synthetic(rank=2, strength=0.8, noise=0.1, seed=1)
    rmse = {
        model.name: _rmse(model.fit(train).predict(test_u, test_i), test_r)
        for model in (GlobalMean(), BiasBaseline(), BiasedMF(factors=8, lr=0.02, reg=0.02, epochs=60), ItemKNN(k=30))
    }
    assert rmse["biased_mf"] < 0.6 * rmse["bias_baseline"]
    assert rmse["item_knn"] < 0.9 * rmse["bias_baseline"]
    assert rmse["item_knn"] < 0.6 * rmse["global_mean"]


def test_item_knn_matches_a_loop_over_the_formula():
    train, test_u, test_i, _, _, _ = _synthetic(n_users=40, n_items=25, density=0.5, rank=2, strength=0.8, seed=2)
    k, shrinkage = 5, 10.0
    model = ItemKNN(k=k, shrinkage=shrinkage, min_support=3, block=4).fit(train)
    base = BiasBaseline().fit(train)
    z = {(u, i): r - base.predict([u], [i])[0] for u, i, r in zip(train.users, train.items, train.ratings)}
    raters = {i: {u for (u, j) in z if j == i} for i in range(train.n_items)}

    def sim(i, j):
        common = raters[i] & raters[j]
        if i == j:
            return 1.0
        if len(common) < 3:
            return 0.0
        num = sum(z[u, i] * z[u, j] for u in common)
        den = math.sqrt(sum(z[u, i] ** 2 for u in common) * sum(z[u, j] ** 2 for u in common))
        return num / den * (len(common) - 1) / (len(common) - 1 + shrinkage)

    expected = []
    for u, i in zip(test_u[:40], test_i[:40]):
        rated = [j for (v, j) in z if v == u]
        top = sorted(((sim(i, j), j) for j in rated), reverse=True)[:k]
        pos = [(s, j) for s, j in top if s > 0]
        offset = sum(s * z[u, j] for s, j in pos) / sum(s for s, _ in pos) if pos else 0.0
        expected.append(base.predict([u], [i])[0] + offset)
    np.testing.assert_allclose(model.predict(test_u[:40], test_i[:40]), expected, atol=1e-4)


def test_mf_is_deterministic_given_a_seed():
    train, test_u, test_i, _, _, _ = _synthetic(n_users=60, n_items=40, rank=2, strength=0.5)
    first = BiasedMF(factors=4, epochs=5, seed=3).fit(train).predict(test_u, test_i)
    again = BiasedMF(factors=4, epochs=5, seed=3).fit(train).predict(test_u, test_i)
    other = BiasedMF(factors=4, epochs=5, seed=4).fit(train).predict(test_u, test_i)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def _split(seed=0):
    """Synthetic string-id rows: train, then one validation and one test row per user."""
    train, test_u, test_i, test_r, _, _ = _synthetic(n_users=80, n_items=60, density=0.4, noise=0.2, seed=seed)
    rows = _rows(train.users, train.items, train.ratings)
    held = _rows(test_u, test_i, test_r)
    seen, valid, test = set(), [], []
    for user, item, rating in held:  # first held-out row of a user -> validation, second -> test
        (test if user in seen else valid).append((user, item, rating))
        seen.add(user)
    return rows, valid, test


def _run(train, valid, test, valid_truth=None, test_truth=None, **kwargs):
    return run_baselines(
        train,
        [(u, i) for u, i, _ in valid],
        [r for *_, r in valid] if valid_truth is None else valid_truth,
        [(u, i) for u, i, _ in test],
        [r for *_, r in test] if test_truth is None else test_truth,
        1.0,
        5.0,
        **kwargs,
    )


def test_hyper_parameters_follow_the_validation_data_and_ignore_the_test_data():
    train, valid, test = _split()
    grid = {"bias_baseline": {"reg_user": [0.5, 1e9], "reg_item": [1e9]}}
    # Real validation ratings reward user biases; a constant validation set rewards predicting mu.
    (honest,) = _run(train, valid, test, grids=grid)
    mu = float(np.mean([r for *_, r in train]))
    (flat,) = _run(train, valid, test, valid_truth=[mu] * len(valid), grids=grid)
    assert honest.params == {"reg_user": 0.5, "reg_item": 1e9}
    assert flat.params == {"reg_user": 1e9, "reg_item": 1e9}
    # Test ratings that would favour the other candidate change nothing but the test scores.
    (adversarial,) = _run(train, valid, test, test_truth=[mu] * len(test), grids=grid)
    assert adversarial.params == honest.params
    assert (adversarial.valid_mae, adversarial.valid_rmse) == (honest.valid_mae, honest.valid_rmse)
    assert adversarial.test_mae != honest.test_mae


def test_test_predictions_are_refit_on_train_plus_validation():
    train = [("a", "x", 2.0), ("a", "y", 2.0), ("b", "x", 4.0)]
    valid, test = [("new", "x", 5.0)], [("new", "y", 1.0)]
    (res,) = _run(train, valid, test, grids={"user_mean": {}})
    assert res.valid_pred[0] == pytest.approx(8 / 3)  # cold in train: global mean
    assert res.test_pred[0] == pytest.approx(5.0)  # its validation rating is history at test time
    assert (res.test_mae, res.n_valid, res.n_test) == (pytest.approx(4.0), 1, 1)


def test_predictions_are_clipped_to_the_scale():
    train, valid, test = _split()
    grids = {"bias_baseline": {"reg_user": [0.0], "reg_item": [0.0]}, "biased_mf": {"epochs": [3]}}
    results = run_baselines(
        train,
        [(u, i) for u, i, _ in valid],
        [r for *_, r in valid],
        [(u, i) for u, i, _ in test],
        [r for *_, r in test],
        2.9,
        3.1,
        grids=grids,
    )
    for res in results:
        for pred in (res.valid_pred, res.test_pred):
            assert pred.min() == pytest.approx(2.9) and pred.max() == pytest.approx(3.1)


def test_default_run_is_deterministic_and_tabulates():
    train, valid, test = _split(seed=5)
    grids = {"global_mean": {}, "item_knn": {"k": [5, 20]}, "biased_mf": {"factors": [4], "epochs": [5, 10]}}
    first, again = _run(train, valid, test, grids=grids, seed=1), _run(train, valid, test, grids=grids, seed=1)
    assert [r.name for r in first] == ["global_mean", "item_knn", "biased_mf"]
    assert [(r.params, r.test_mae) for r in first] == [(r.params, r.test_mae) for r in again]
    assert first[2].n_candidates == 2 and all(isinstance(r, BaselineResult) for r in first)
    table = format_table(first).splitlines()
    assert len(table) == 2 + 3 and table[0].startswith("| method |")
    assert "| biased_mf | factors=4, epochs=" in table[4]


def test_bad_arguments_fail_early_with_a_clear_message():
    train, valid, test = _split()
    with pytest.raises(ValueError, match="unknown baseline"):
        _run(train, valid, test, grids={"svdpp": {}})
    with pytest.raises(ValueError, match="no hyper-parameter"):
        _run(train, valid, test, grids={"item_knn": {"neighbours": [5]}})
    with pytest.raises(ValueError, match="ratings for"):
        _run(train, valid, test, valid_truth=[3.0])
    with pytest.warns(UserWarning, match="skipping item_knn"):
        assert _run(train, valid, test, grids={"item_knn": {"max_cells": [10]}}) == []


def _tied_csv(path) -> None:
    """12 users x 10 ratings; a third of the data sits at a few timestamps, so both time cuts land on ties."""
    rng = np.random.default_rng(0)
    lines = ["user,item,rating,timestamp"]
    for u in range(12):
        for k in range(10):
            stamp = 1000 + (k // 3) * 10 if k < 9 else 1100  # three ratings share each stamp; the last at 1100
            lines.append(f"u{u},i{(u + k) % 15},{int(rng.integers(1, 6))},{stamp + (u % 3)}")
    path.write_text("\n".join(lines) + "\n")


def test_time_split_baselines_never_see_the_test_period_ties_included(tmp_path):
    from reczero.cli import main
    from reczero.data.datamodule import RatingDataModule
    from reczero.data.samples import SampleConfig
    from reczero.data.sources import SourceConfig
    from reczero.evaluation.protocol import baseline_split

    _tied_csv(tmp_path / "r.csv")
    source = SourceConfig(format="csv", path=str(tmp_path / "r.csv"))
    samples = SampleConfig(split="time", time_quantiles=(0.5, 0.75), min_history=1)
    dm = RatingDataModule(source=source, samples=samples, cache_dir=str(tmp_path / "cache"))
    split = baseline_split(dm)
    rows = dm.data.interactions
    stamps = {(r.user, r.item): r.timestamp for r in rows}
    test_times = [stamps[pair] for pair in split["test"]["pairs"]]
    start = min(test_times)
    assert start == split["test_start"]
    tied = [r for r in rows if r.timestamp == start]
    assert len(tied) > 1  # the cut falls on a tie: every row at that second is in the test period
    assert all(stamps[(u, i)] < start for u, i, _ in split["refit"])
    assert all(stamps[(u, i)] < min(stamps[p] for p in split["validation"]["pairs"]) for u, i, _ in split["train"])
    assert len(split["refit"]) == sum(r.timestamp < start for r in rows)  # every earlier row, not only samples
    # the command fits on exactly that: a user-mean refit on `refit` matches a hand computation
    out = main(["baselines", "--data.source.format=csv", f"--data.source.path={tmp_path / 'r.csv'}",
                "--data.samples.split=time", "--data.samples.time_quantiles=[0.5, 0.75]",
                "--data.samples.min_history=1", f"--data.cache_dir={tmp_path / 'cache'}",
                "--methods", "user_mean"])  # fmt: skip
    by_user: dict[str, list[float]] = {}
    for u, _, r in split["refit"]:
        by_user.setdefault(u, []).append(r)
    mu = float(np.mean([r for _, _, r in split["refit"]]))
    expected = [float(np.clip(np.mean(by_user[u]) if u in by_user else mu, 1, 5)) for u, _ in split["test"]["pairs"]]
    got = next(r for r in out["results"] if r["name"] == "user_mean")["test_pred"]
    assert got == pytest.approx(expected, abs=1e-4)
    names = {r["name"] for r in out["results"]}
    assert {"user_mean (rounded)", "teacher_rule", "bias_shown", "item_mean_shown"} <= names


def test_shown_predictors_use_what_the_prompt_shows(tmp_path):
    from reczero.data.datamodule import RatingDataModule
    from reczero.data.samples import SampleConfig
    from reczero.data.sources import SourceConfig
    from reczero.evaluation.baselines import shown_predictors

    _tied_csv(tmp_path / "r.csv")
    source = SourceConfig(format="csv", path=str(tmp_path / "r.csv"))
    dm = RatingDataModule(source=source, samples=SampleConfig(split="time", min_history=1), use_cache=False)
    dm.setup()
    positions = dm.positions("test")
    got = shown_predictors(dm, positions)
    t = dm.table
    for k, pos in enumerate(positions):
        if t.user_count[pos] and t.item_count[pos]:
            assert got["user_mean_shown"][k] == pytest.approx(t.user_avg[pos])
            assert got["item_mean_shown"][k] == pytest.approx(t.item_avg[pos])
            bias = t.item_avg[pos] + t.user_avg[pos] - dm.typical_rating
            assert got["bias_shown"][k] == pytest.approx(min(max(bias, 1.0), 5.0))
    assert set(np.unique(got["teacher_rule"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
