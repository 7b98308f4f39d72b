"""Projections: agreement with the materialised definition, unbiasedness, targets, planted clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.features.gradients import LayerFactors
from lm_eval_approx.models.layers import WeightDelta, layer_shape, linear_modules, oriented_weight, weight_delta
from lm_eval_approx.features.projection import PROJECTORS, KroneckerProjector, make_projector, split_dim

SHAPES = {"a": (10, 6), "b": (7, 9)}
SEEDS = 300
Z_MAX = 4.5


def _factors(batch=3, r=4, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return {n: LayerFactors(torch.randn(batch, r, o, generator=gen), torch.randn(batch, r, i, generator=gen))
            for n, (o, i) in shapes.items()}


def _flat(factors, shapes=SHAPES):
    return torch.cat([factors[n].gradient().reshape(factors[n].delta.shape[0], -1) for n in shapes], dim=1)


def test_kronecker_equals_materialised_definition():
    proj = KroneckerProjector(SHAPES, dim=20, seed=3)
    factors = _factors()
    got = proj.project(factors)
    blocks = []
    for name in SHAPES:
        p_out, p_in = proj.matrices(name)
        blocks.append(torch.einsum("do,boi,ei->bde", p_out, factors[name].gradient(), p_in).reshape(3, -1))
    torch.testing.assert_close(got, torch.cat(blocks, dim=1), atol=1e-5, rtol=1e-5)
    assert got.shape == (3, proj.dim) and proj.dim == sum(a * b for a, b in proj.blocks.values())


def test_identity_is_the_flat_gradient_and_dense_is_a_matrix_product():
    factors = _factors()
    ident = make_projector("identity", SHAPES, dim=1)
    torch.testing.assert_close(ident.project(factors), _flat(factors))
    dense = make_projector("dense", SHAPES, dim=12, seed=1)
    want = torch.cat([_flat({n: factors[n]}, {n: SHAPES[n]}) @ dense.matrix(n).t() for n in SHAPES], dim=1)
    torch.testing.assert_close(dense.project(factors), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["kronecker", "dense"])
def test_inner_products_are_unbiased_over_seeds(kind):
    factors = _factors(batch=2, r=2, seed=7)
    flat = _flat(factors)
    exact = (flat[0] @ flat[1]).item()
    samples = []
    for seed in range(SEEDS):
        proj = make_projector(kind, SHAPES, dim=8, seed=seed)
        feats = proj.project(factors)
        samples.append((feats[0] @ feats[1]).item())
    samples = np.array(samples)
    z = abs(samples.mean() - exact) / (samples.std(ddof=1) / np.sqrt(SEEDS))
    assert z < Z_MAX, f"mean {samples.mean():.3f} vs exact {exact:.3f} (z={z:.2f})"
    assert samples.std() > 0, "different seeds must give different projections"


@pytest.mark.parametrize("kind", ["kronecker", "dense", "identity"])
def test_target_equals_projection_of_materialised_delta(kind):
    gen = torch.Generator().manual_seed(2)
    full = torch.randn(10, 6, generator=gen)
    left, right = torch.randn(7, 2, generator=gen), torch.randn(2, 9, generator=gen)
    deltas = {"a": WeightDelta([(full, None)]), "b": WeightDelta([(left, right)])}
    proj = make_projector(kind, SHAPES, dim=20, seed=4)
    got = proj.project_delta(deltas)
    # The same delta written as "gradient factors" (one outer product per column) goes through project().
    as_factors = {"a": LayerFactors(full.t().reshape(1, 6, 10), torch.eye(6).reshape(1, 6, 6)),
                  "b": LayerFactors((left @ right).t().reshape(1, 9, 7), torch.eye(9).reshape(1, 9, 9))}
    torch.testing.assert_close(got, proj.project(as_factors)[0], atol=1e-4, rtol=1e-4)


def test_low_rank_factors_rebuild_features():
    shapes = {"head": (50, 8)}
    proj = KroneckerProjector(shapes, dim=64, seed=0)
    factors = _factors(batch=4, r=3, shapes=shapes)
    a, b = proj.low_rank(factors)
    assert a.shape == (4, 3, 8) and b.shape == (4, 3, 8)
    torch.testing.assert_close(torch.einsum("bri,brj->bij", a, b).reshape(4, -1), proj.project(factors))
    assert KroneckerProjector(SHAPES, dim=20).low_rank(_factors()) is None


def test_planted_cluster_is_recovered_as_top_set():
    shapes = {"w": (96, 64)}
    gen = torch.Generator().manual_seed(11)
    direction = LayerFactors(torch.randn(1, 2, 96, generator=gen), torch.randn(1, 2, 64, generator=gen))
    n, cluster = 60, [3, 17, 29, 41, 58]
    delta = torch.randn(n, 3, 96, generator=gen) * 0.3
    x = torch.randn(n, 3, 64, generator=gen) * 0.3
    delta[cluster, :2], x[cluster, :2] = direction.delta[0], direction.x[0]
    target = WeightDelta([(direction.gradient()[0], None)])
    proj = make_projector("kronecker", shapes, dim=256, seed=0)
    feats = proj.project({"w": LayerFactors(delta, x)})
    t = proj.project_delta({"w": target})
    cos = (feats @ t) / (feats.norm(dim=1) * t.norm())
    assert sorted(torch.topk(cos, len(cluster)).indices.tolist()) == cluster


def test_seeded_and_validated():
    a = KroneckerProjector(SHAPES, dim=20, seed=5).matrices("a")
    b = KroneckerProjector(SHAPES, dim=20, seed=5).matrices("a")
    c = KroneckerProjector(SHAPES, dim=20, seed=6).matrices("a")
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert split_dim(10, 3) == [4, 3, 3]
    with pytest.raises(ConfigError, match="dim"):
        split_dim(2, 3)
    with pytest.raises(ConfigError, match="dim"):
        make_projector("kronecker", SHAPES, dim=0)
    with pytest.raises(UnknownNameError, match="kronecker"):
        make_projector("sjlt2", SHAPES)
    with pytest.raises(ConfigError, match="dense"):
        make_projector("dense", {"head": (49152, 576)}, dim=4096)


def test_layers_sharing_an_input_project_like_separate_layers():
    shapes = {"q": (8, 6), "k": (4, 6), "o": (6, 8)}
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 5, 6, generator=gen)
    factors = {"q": LayerFactors(torch.randn(2, 5, 8, generator=gen), x),
               "k": LayerFactors(torch.randn(2, 5, 4, generator=gen), x),
               "o": LayerFactors(torch.randn(2, 5, 6, generator=gen), torch.randn(2, 5, 8, generator=gen))}
    proj = KroneckerProjector(shapes, dim=30, seed=1)
    separate = torch.cat([proj.project_layer(n, factors[n]) for n in shapes], dim=1)
    torch.testing.assert_close(proj.project(factors), separate, atol=1e-5, rtol=1e-5)


def test_config_names_every_projector_kind():
    """FeatureConfig names the projection kinds without importing torch; the names must match."""
    from lm_eval_approx.features.config import PROJECTIONS
    from lm_eval_approx.features.projection import PROJECTORS

    assert tuple(PROJECTORS) == PROJECTIONS


# A tiny GPT-2 pair (Conv1D layers, so the out×in orientation is exercised too): θf changes two
# layers of the explicit parameter list and leaves the middle one exactly as θ0 has it.
PAIR_LAYERS = ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc", "transformer.h.1.attn.c_proj"]
UNCHANGED = "transformer.h.1.mlp.c_fc"
PAIR_DIM = 48


@pytest.fixture(scope="module")
def pair_with_an_unchanged_layer(tiny_tokenizer):
    import copy

    from conftest import build_tiny_model

    base = build_tiny_model("gpt2", len(tiny_tokenizer), seed=0)
    tuned = copy.deepcopy(base)
    modules = linear_modules(tuned)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name in PAIR_LAYERS:
            if name != UNCHANGED:
                modules[name].weight.add_(0.1 * torch.randn(modules[name].weight.shape, generator=gen))
    return base, tuned


def _slow_target(proj, diffs):
    """θ0 − θf materialised from the weights, each layer written as gradient factors and sent through
    the per-layer projection of gradients (dense: the stored JL matrix times the flattened matrix)."""
    blocks = []
    for name in proj.shapes:
        out, inp = diffs[name].shape
        as_factors = LayerFactors(diffs[name].t().reshape(1, inp, out), torch.eye(inp).reshape(1, inp, inp))
        blocks.append(proj.project_layer(name, as_factors)[0])
    return torch.cat(blocks)


@pytest.mark.parametrize("kind", sorted(PROJECTORS))
def test_a_layer_theta_f_leaves_unchanged_projects_to_zeros_of_its_block(pair_with_an_unchanged_layer, kind):
    base, tuned = pair_with_an_unchanged_layer
    mods0, mods_f = linear_modules(base), linear_modules(tuned)
    deltas = {n: weight_delta(mods0[n], mods_f[n]) for n in PAIR_LAYERS}
    assert deltas[UNCHANGED].terms == [] and all(deltas[n].terms for n in PAIR_LAYERS if n != UNCHANGED)
    diffs = {n: (oriented_weight(mods0[n]) - oriented_weight(mods_f[n])).detach() for n in PAIR_LAYERS}
    assert not torch.any(diffs[UNCHANGED])
    proj = make_projector(kind, {n: layer_shape(mods_f[n]) for n in PAIR_LAYERS}, dim=PAIR_DIM, seed=3)
    target = proj.project_delta(deltas)  # the expression features/build.py computes the target with
    slow = _slow_target(proj, diffs)
    assert target.shape == slow.shape == (proj.dim,)
    torch.testing.assert_close(target, slow, atol=1e-5, rtol=1e-4)
    block = proj.project_delta_layer(UNCHANGED, deltas[UNCHANGED])
    out, inp = layer_shape(mods_f[UNCHANGED])
    width = proj.project_layer(UNCHANGED, LayerFactors(torch.zeros(1, 1, out), torch.zeros(1, 1, inp))).shape[1]
    assert block.shape == (width,) and not torch.any(block)
    assert torch.any(target), "the changed layers still carry the target"
    if kind == "dense":  # the dense JL written out: the stored matrix of each layer times vec(θ0 − θf)
        by_matrix = torch.cat([proj.matrix(n) @ diffs[n].reshape(-1) for n in PAIR_LAYERS])
        torch.testing.assert_close(target, by_matrix, atol=1e-5, rtol=1e-4)


def test_an_empty_delta_materialises_as_a_zero_tensor():
    zero = WeightDelta().materialise()
    assert isinstance(zero, torch.Tensor) and not torch.any(zero)
    assert torch.equal(zero.expand(3, 2), torch.zeros(3, 2))  # what the dense and identity projectors read


@pytest.mark.parametrize("kind", sorted(PROJECTORS))
def test_the_feature_store_target_of_an_explicit_list_with_an_unchanged_layer(pair_with_an_unchanged_layer,
                                                                               tiny_tokenizer, kind, tmp_path):
    """End to end: the store's target for an explicit parameter list that names the unchanged layer."""
    from lm_eval_approx.data.corpus import Corpus
    from lm_eval_approx.features.build import build_feature_store
    from lm_eval_approx.features.config import FeatureConfig

    base, tuned = pair_with_an_unchanged_layer
    for model, folder in ((base, tmp_path / "base"), (tuned, tmp_path / "tuned")):
        model.save_pretrained(folder, safe_serialization=True)
        tiny_tokenizer.save_pretrained(folder)
    config = FeatureConfig(base=str(tmp_path / "base"), finetuned=str(tmp_path / "tuned"), task="approx_agnews",
                           params=",".join(PAIR_LAYERS), projection=kind, dim=PAIR_DIM, seed=3, batch_size=2,
                           max_length=16, labels="true")
    corpus = Corpus(ids=["doc:0", "doc:1"], texts=["The team won.", "Stocks fell."], labels=[1, 2],
                    sources=["test"] * 2)
    store = build_feature_store(config, corpus, None, tmp_path / "store")
    assert store.meta["params"] == PAIR_LAYERS
    mods0, mods_f = linear_modules(base), linear_modules(tuned)
    proj = make_projector(kind, {n: layer_shape(mods_f[n]) for n in PAIR_LAYERS}, dim=PAIR_DIM, seed=3)
    diffs = {n: (oriented_weight(mods0[n]) - oriented_weight(mods_f[n])).detach() for n in PAIR_LAYERS}
    np.testing.assert_allclose(store.target, _slow_target(proj, diffs).numpy(), atol=1e-5, rtol=1e-4)
