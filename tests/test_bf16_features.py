"""Gradient features of a model loaded in bfloat16 are accumulated in float32.

The forward (and, for ``changed`` layers, the backward) of a bf16 model runs in bf16, so each token's
δ_t and x_t carry bf16's ~3 significant digits; what must not be bf16 is the sum over tokens
G = Σ_t δ_t x_tᵀ and its projection, where rounding would grow with the document's length.
``features/gradients.py`` upcasts every factor to float32 (``.float()``) before the projector (float32
Rademacher matrices) sums over tokens. Measured on the tiny random Llama of conftest.py, documents of
25-128 tokens: the projected head features of the bf16 model are within 3e-7 (relative,
worst row) of a float64 sum of the same factors, where a bf16 sum is 3e-3 off; and within 0.5% of the
float32 model's features for the head and for every linear layer (``changed``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_model
from _specs import AGNEWS, MSMARCO

from lm_eval_approx.data.corpus import Corpus
from lm_eval_approx.features.build import build_feature_store
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.features.encoding import collate, encode_examples, flatten
from lm_eval_approx.features.gradients import head_factors, layer_factors
from lm_eval_approx.features.projection import make_projector
from lm_eval_approx.models.layers import head_name, linear_modules
from lm_eval_approx.models.loading import load_model, load_tokenizer

TEXTS = ["The team won the final match of the season and the fans celebrated in the streets all night. " * 2,
         "Stocks fell as the central bank raised interest rates again, the third rise this year. " * 3,
         "Leaders met in Geneva to discuss the peace treaty.",
         "A new chip doubles the speed of scientific computing in labs across the country. " * 2]
LABELS = [1, 2, 0, 3]
# float32 sum of bf16 factors against a float64 sum: 3e-7 measured (float32's 6e-8 per operation);
# a bf16 sum is ~3e-3 off, so 1e-5 tells the two apart by two orders of magnitude either way.
FLOAT32_SUM_TOL = 1e-5
BF16_SUM_FLOOR = 1e-3
# bf16 model against float32 model, worst row: 0.43-0.51% measured for head and changed features.
BF16_MODEL_TOL = 2e-2


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Worst row's ‖a − b‖ / ‖b‖."""
    a, b = a.double(), b.double()
    return ((a - b).norm(dim=1) / b.norm(dim=1)).max().item()


def _features(path: str, dtype: str, spec, labels):
    model = load_model(path, dtype=dtype)
    tokenizer = load_tokenizer(path)
    encoded, _ = flatten(encode_examples(tokenizer, spec, TEXTS, labels, max_length=128))
    batch = collate(encoded, tokenizer.pad_token_id)
    head = head_name(model)
    names = list(linear_modules(model))
    _, head_f = head_factors(model, batch, head)
    _, layer_f = layer_factors(model, batch, names)
    shapes = {n: (f.delta.shape[-1], f.x.shape[-1]) for n, f in layer_f.items()}
    head_proj = make_projector("kronecker", {head: shapes[head]}, 1024, 0)
    layer_proj = make_projector("kronecker", shapes, 1024, 0)
    return model, head_f, layer_f, head_proj, head_proj.project(head_f), layer_proj.project(layer_f)


@pytest.mark.parametrize("spec, labels", [(MSMARCO, None), (AGNEWS, LABELS)], ids=["lm", "classification"])
def test_a_bf16_model_s_factors_are_summed_over_tokens_in_float32(tiny_llama, spec, labels, one_torch_thread):
    model, head_f, layer_f, head_proj, head_features, layer_features = _features(tiny_llama, "bfloat16", spec, labels)
    assert next(model.parameters()).dtype == torch.bfloat16
    for factors in (head_f, layer_f):
        assert all(f.delta.dtype == f.x.dtype == torch.float32 for f in factors.values())
    assert head_features.dtype == layer_features.dtype == torch.float32
    ((name, f),) = head_f.items()
    p_out, p_in = head_proj.matrices(name)
    exact = torch.einsum("do,bro,bri,ei->bde", p_out.double(), f.delta.double(), f.x.double(), p_in.double())
    exact = exact.reshape(exact.shape[0], -1)
    assert _relative(head_features, exact) < FLOAT32_SUM_TOL
    a, b = f.delta.bfloat16() @ p_out.bfloat16().t(), f.x.bfloat16() @ p_in.bfloat16().t()
    bf16_sum = (a.transpose(1, 2) @ b).reshape(a.shape[0], -1)  # what a bf16 accumulation would store
    assert _relative(bf16_sum, exact) > BF16_SUM_FLOOR


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_bf16_features_match_the_float32_model_s(kind, tiny_llama, tiny_gpt2, one_torch_thread):
    path = tiny_llama if kind == "llama" else tiny_gpt2
    *_, head32, changed32 = _features(path, "float32", MSMARCO, None)
    *_, head16, changed16 = _features(path, "bfloat16", MSMARCO, None)
    assert _relative(head16, head32) < BF16_MODEL_TOL
    assert _relative(changed16, changed32) < BF16_MODEL_TOL


@pytest.mark.parametrize("params", ["head", "changed"])
def test_a_store_extracted_in_bf16_matches_the_float32_store(params, tiny_gpt2, tmp_path, one_torch_thread):
    """FeatureConfig.dtype end to end: features, losses and the target θ0 − θf (random θ0, θf: a
    large difference, which bf16 weights keep; see the report on small full-finetune updates)."""
    import numpy as np

    tuned = save_tiny_model(tmp_path / "tuned", "gpt2", seed=1)
    corpus = Corpus(ids=[f"doc:{i}" for i in range(4)], texts=TEXTS, labels=LABELS, sources=["test"] * 4)
    stores = {}
    for dtype in ("float32", "bfloat16"):
        config = FeatureConfig(base=tiny_gpt2, finetuned=tuned, task="approx_agnews", batch_size=2, max_length=64,
                               params=params, dim=256, dtype=dtype)
        stores[dtype] = build_feature_store(config, corpus, LABELS, tmp_path / dtype)
    f32, bf16 = stores["float32"], stores["bfloat16"]
    features = [torch.from_numpy(np.asarray(s.features, dtype=np.float32)) for s in (bf16, f32)]
    assert _relative(*features) < BF16_MODEL_TOL
    targets = [torch.from_numpy(np.asarray(s.target, dtype=np.float32)).reshape(1, -1) for s in (bf16, f32)]
    assert _relative(*targets) < BF16_MODEL_TOL
    np.testing.assert_allclose(bf16.loss, f32.loss, rtol=BF16_MODEL_TOL)
