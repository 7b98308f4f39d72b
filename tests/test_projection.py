"""Projections: agreement with the materialised definition, unbiasedness, targets, planted clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.features.gradients import LayerFactors
from lm_eval_approx.models.layers import WeightDelta
from lm_eval_approx.features.projection import KroneckerProjector, make_projector, split_dim

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
