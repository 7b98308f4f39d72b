"""FeatureStore: round trip, metadata checks, resume mask, low-rank factors, merge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lm_eval_approx.errors import StoreMismatchError
from lm_eval_approx.features.store import FeatureOverflowError, FeatureStore
from lm_eval_approx.features.gradient_features import GradientFeatures

META = {"task": "approx_agnews", "params": "head", "projection": "kronecker", "seed": 0, "alpha": 1.0}


def _rows(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)).astype(np.float32), rng.random(n).astype(np.float32),
            rng.integers(0, 4, n), rng.random(n).astype(np.float32))


def test_round_trip_and_gradient_features(tmp_path):
    ids = [f"doc:{i}" for i in range(7)]
    feats, loss, labels, sqnorm = _rows(7, 12)
    store = FeatureStore.create(tmp_path / "s", META, ids, dim=12)
    assert not store.complete and store.pending().tolist() == list(range(7))
    store.write_rows(np.arange(7), feats, loss, labels, sqnorm)
    store.set_target(np.arange(12, dtype=np.float32))
    reopened = FeatureStore.open(tmp_path / "s", expect=META)
    assert reopened.ids == ids and reopened.complete
    np.testing.assert_array_equal(reopened.features, feats.astype(np.float16))
    np.testing.assert_array_equal(reopened.loss, loss)
    np.testing.assert_array_equal(reopened.labels, labels)
    np.testing.assert_array_equal(reopened.sqnorm, sqnorm)
    gf = reopened.gradient_features()
    assert isinstance(gf, GradientFeatures) and gf.alpha == 1.0 and gf.factors is None
    assert gf.matrix.dtype == np.float16 and gf.matrix.shape == (7, 12)
    np.testing.assert_array_equal(gf.target, np.arange(12, dtype=np.float32))


@pytest.mark.parametrize("field,value", [("task", "approx_msmarco"), ("seed", 1), ("alpha", 0.5),
                                         ("projection", "dense"), ("dim", 13)])
def test_reopen_with_other_metadata_raises(tmp_path, field, value):
    FeatureStore.create(tmp_path / "s", META, ["a", "b"], dim=12)
    with pytest.raises(StoreMismatchError, match=field):
        FeatureStore.open(tmp_path / "s", expect=dict(META, **{field: value}))
    with pytest.raises(StoreMismatchError):
        meta = {k: v for k, v in dict(META, **{field: value}).items() if k != "dim"}
        FeatureStore.open_or_create(tmp_path / "s", meta, ["a", "b"], value if field == "dim" else 12)


def test_resume_with_other_ids_raises(tmp_path):
    FeatureStore.create(tmp_path / "s", META, ["a", "b"], dim=4)
    with pytest.raises(StoreMismatchError, match="ids_fingerprint"):
        FeatureStore.open_or_create(tmp_path / "s", META, ["a", "c"], 4)


def test_resume_keeps_written_rows(tmp_path):
    ids = [str(i) for i in range(6)]
    feats, loss, labels, sqnorm = _rows(6, 5)
    store = FeatureStore.create(tmp_path / "s", META, ids, dim=5)
    store.write_rows(np.array([0, 2]), feats[[0, 2]], loss[[0, 2]], labels[[0, 2]], sqnorm[[0, 2]])
    del store
    resumed = FeatureStore.open_or_create(tmp_path / "s", META, ids, 5)
    assert resumed.pending().tolist() == [1, 3, 4, 5]
    np.testing.assert_array_equal(resumed.features[2], feats[2].astype(np.float16))
    with pytest.raises(StoreMismatchError, match="incomplete"):
        resumed.gradient_features()


def test_factors_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 2, 4)).astype(np.float16)
    b = rng.standard_normal((3, 2, 5)).astype(np.float16)
    feats = np.einsum("nri,nrj->nij", a.astype(np.float32), b.astype(np.float32)).reshape(3, 20)
    store = FeatureStore.create(tmp_path / "s", META, ["x", "y", "z"], dim=20, factor_shape=(2, 4, 5))
    store.write_rows(np.arange(3), feats, np.zeros(3), np.zeros(3), np.ones(3), (a, b))
    store.set_target(np.ones(20))
    gf = FeatureStore.open(tmp_path / "s").gradient_features()
    fa, fb = gf.factors
    assert fa.shape == (3, 2, 4) and fb.shape == (3, 2, 5)
    rebuilt = np.einsum("nri,nrj->nij", fa.astype(np.float32), fb.astype(np.float32)).reshape(3, 20)
    np.testing.assert_allclose(gf.matrix.astype(np.float32), rebuilt, rtol=2e-3, atol=2e-3)


def test_merge_concatenates_shards_in_order(tmp_path):
    feats, loss, labels, sqnorm = _rows(5, 3)
    shards = []
    for k, rows in enumerate([np.arange(0, 3), np.arange(3, 5)]):
        shard = FeatureStore.create(tmp_path / f"shard{k}", META, [f"d{i}" for i in rows], dim=3)
        shard.write_rows(np.arange(len(rows)), feats[rows], loss[rows], labels[rows], sqnorm[rows])
        shard.set_target(np.full(3, 2.0))
        shards.append(shard)
    merged = FeatureStore.merge(shards, tmp_path / "merged", META)
    assert merged.ids == [f"d{i}" for i in range(5)] and merged.complete
    np.testing.assert_array_equal(merged.features, feats.astype(np.float16))
    np.testing.assert_array_equal(merged.labels, labels)


def test_overflow_and_readonly_raise(tmp_path):
    store = FeatureStore.create(tmp_path / "s", META, ["a"], dim=2)
    with pytest.raises(FeatureOverflowError, match="float16"):
        store.write_rows(np.array([0]), np.array([[1e6, 0.0]]), np.zeros(1), np.zeros(1), np.zeros(1))
    with pytest.raises(StoreMismatchError, match="read-only"):
        FeatureStore.open(tmp_path / "s").set_target(np.zeros(2))
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["num_examples"] == 1 and meta["format"] == 1
