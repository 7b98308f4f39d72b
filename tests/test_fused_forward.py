"""θf's pseudo-labels read in the feature forward (``features/fused.py``) against the two passes
(``pseudo_labels.pseudo_label``, then the features of the chosen labels), and the float32 target of
models run in bf16/fp16 (``features/build.py``).

Tolerances. When every choice is one token, a document's carrier is its label-0 encoding: the batches
are the two-pass batches, token for token except the label token itself, which no scored logit sees
(causal attention) and whose position gets δ = 0; so the stores are compared bit for bit. With one
multi-token choice the carrier is that choice's row, longer than a one-token label's encoding, so the
padded batch length differs and the float32 features move by rounding only: the factors' projections
agree to 1e-5 relative here (float32's 6e-8 per operation, summed over a few hundred terms), and the
stored float16 features to the float16 rounding of test_features.py (F16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, save_tiny_model
from _specs import MSMARCO

import lm_eval_approx.features.build as build
from lm_eval_approx.data.corpus import Corpus
from lm_eval_approx.features.build import build_feature_store, build_feature_stores
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.features.encoding import Batch, Encoded, collate, encode_examples
from lm_eval_approx.features.fused import NO_CHOICE, PseudoLabelChoice, carrier_of, carriers, task_has_carriers
from lm_eval_approx.features.gradients import head_factors, layer_factors, total_sqnorm
from lm_eval_approx.features.losses import example_losses
from lm_eval_approx.features.projection import make_projector
from lm_eval_approx.features.pseudo_labels import pseudo_label
from lm_eval_approx.features.store import NO_LABEL, FeatureStore
from lm_eval_approx.models.layers import head_name, layer_shape, linear_modules, weight_delta
from lm_eval_approx.models.loading import load_model, load_tokenizer
from lm_eval_approx.tasks.kinds import CLASSIFICATION
from lm_eval_approx.tasks.template_spec import TemplateSpec

TEXTS = ["The team won the final match of the season.", "Stocks fell as the central bank raised rates.",
         "Leaders met in Geneva.", "A new chip doubles the speed of scientific computing.",
         "Peace talks resumed in the capital after a long pause.", "Shares of the chip maker rose.",
         "The striker scored twice.", "Scientists found water on a distant planet.",
         "Oil prices climbed for a third week.", "The coach praised the young goalkeeper after the draw.",
         "A storm closed the harbour.", "Quarterly profits beat every forecast by analysts."]
# Under the tiny tokenizer " Sports" and " Business" are one token each, " Sci/Tech" three.
ONE_TOKEN = TemplateSpec(name="fused_one_token", kind=CLASSIFICATION, template="Article: {text}\nTopic:",
                         choices=("Sports", "Business"), max_words=64)
ONE_LONG = TemplateSpec(name="fused_one_long", kind=CLASSIFICATION, template="Article: {text}\nTopic:",
                        choices=("Sports", "Business", "Sci/Tech"), max_words=64)
F16 = {"rtol": 2e-3, "atol": 2e-4}
FLOAT32_ROUNDING = 1e-5
COLUMNS = ("features", "loss", "labels", "sqnorm", "target")


def _corpus(n=len(TEXTS)):
    return Corpus(ids=[f"doc:{i}" for i in range(n)], texts=TEXTS[:n], labels=[0] * n, sources=["test"] * n)


@pytest.fixture(scope="module")
def tuned_gpt2(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tuned-gpt2"), "gpt2", seed=1)


@pytest.fixture
def counted(monkeypatch):
    """The number of ``pseudo_label`` passes build.py runs, with the task spec given by the test."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return pseudo_label(*args, **kwargs)

    monkeypatch.setattr(build, "pseudo_label", counting)
    return calls


def _use_spec(monkeypatch, spec):
    monkeypatch.setattr(build, "get_task_spec", lambda name: spec)


def _config(base, tuned, **kw):
    return FeatureConfig(base=base, finetuned=tuned, **{"task": "approx_agnews", "batch_size": 3, "max_length": 48, **kw})


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm(dim=1) / b.norm(dim=1)).max().item()


def test_the_test_specs_have_carriers(tiny_tokenizer):
    for spec in (ONE_TOKEN, ONE_LONG):
        assert task_has_carriers(tiny_tokenizer, spec)
    lengths = [len(c.encoding.ids) - c.encoding.start for c in carriers(tiny_tokenizer, ONE_LONG, TEXTS, 48)]
    assert lengths == [3] * len(TEXTS)
    from _specs import AGNEWS

    assert not task_has_carriers(tiny_tokenizer, AGNEWS), "' World' and ' Sci/Tech' both take two tokens or more"
    assert not task_has_carriers(tiny_tokenizer, MSMARCO)
    clipped = carriers(tiny_tokenizer, ONE_LONG, [" ".join(["word"] * 60)], 16)
    assert clipped == [None], "a context clipped by the carrier's length is not every choice's context"


@pytest.mark.parametrize("params, spec, checkpoints", [("head", ONE_TOKEN, 1), ("head", ONE_LONG, 1),
                                                       ("changed", ONE_TOKEN, 2), ("changed", ONE_LONG, 1)])
def test_the_fused_store_equals_the_two_passes(params, spec, checkpoints, tiny_gpt2, tuned_gpt2, tmp_path,
                                                monkeypatch, counted):
    _use_spec(monkeypatch, spec)
    config = _config(tiny_gpt2, tuned_gpt2, params=params, dim=256, checkpoints=checkpoints)
    fused = build_feature_stores(config, _corpus(), None, tmp_path / "fused")
    assert counted == [], "no pseudo-label pass: the labels come from the feature forward"
    two = build_feature_stores(config, _corpus(), None, tmp_path / "two", fused=False)
    assert counted, "the twin labels first"
    model_f, tokenizer = load_model(tuned_gpt2), load_tokenizer(tiny_gpt2)
    labels = pseudo_label(model_f, tokenizer, spec, TEXTS, 3, 48).labels
    assert len(set(labels.tolist())) > 1, "both branches of the choice: the carrier's own label and another"
    for a, b in zip(fused, two):
        np.testing.assert_array_equal(a.labels, labels)
        np.testing.assert_array_equal(b.labels, labels)
        if spec is ONE_TOKEN:
            for column in COLUMNS:
                np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
        else:
            np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32), **F16)
            np.testing.assert_allclose(a.loss, b.loss, rtol=FLOAT32_ROUNDING)
            np.testing.assert_allclose(a.sqnorm, b.sqnorm, rtol=FLOAT32_ROUNDING)
            np.testing.assert_array_equal(a.target, b.target)
        if a.factors is not None:
            for x, y in zip(a.factors, b.factors):
                np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), **F16)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma2", "opt", "bloom"])
@pytest.mark.parametrize("params", ["head", "changed"])
def test_fused_factors_equal_those_of_the_chosen_label(params, kind, tiny_tokenizer, one_torch_thread):
    """Before float16 storage, on families whose logits or layers differ (Gemma2's soft-capped logits,
    OPT's flattened MLP rows, BLOOM's ALiBi): the carrier batch's labels are ``pseudo_label``'s, and
    its factors, projected (identity: the exact gradient) and ‖G‖², those of each document's own
    encoding under the chosen label."""
    model = build_tiny_model(kind, len(tiny_tokenizer), seed=3)
    names = [head_name(model)] if params == "head" else list(linear_modules(model))
    mods = linear_modules(model)
    projector = make_projector("identity", {n: layer_shape(mods[n]) for n in names})

    def features(batch, choose=None):
        if params == "head":
            _, factors = head_factors(model, batch, names[0], choose=choose)
        else:
            _, factors = layer_factors(model, batch, names, choose=choose)
        return projector.project(factors), total_sqnorm(factors)

    rows = carriers(tiny_tokenizer, ONE_LONG, TEXTS, 48)
    choose = PseudoLabelChoice(rows, "cpu")
    fused, fused_sq = features(collate([r.encoding for r in rows], tiny_tokenizer.pad_token_id), choose)
    np.testing.assert_array_equal(choose.labels, pseudo_label(model, tiny_tokenizer, ONE_LONG, TEXTS, 3, 48).labels)
    own = [windows[0] for windows in encode_examples(tiny_tokenizer, ONE_LONG, TEXTS, choose.labels, 48)]
    two, two_sq = features(collate(own, tiny_tokenizer.pad_token_id))
    assert _relative(fused, two) < FLOAT32_ROUNDING
    torch.testing.assert_close(fused_sq, two_sq, rtol=FLOAT32_ROUNDING, atol=0)


def test_the_choice_is_the_argmax_of_summed_log_probs_and_moves_the_loss():
    """Synthetic logits: the carrier's own three-token choice wins some rows, one-token choices the
    others (ties to the lowest label); the loss then reads the winner's tokens only."""
    vocab, context = 11, [5, 6, 7]
    encodings = [Encoded(context + [1], 3, 1.0), Encoded(context + [2], 3, 1.0), Encoded(context + [3, 4, 9], 3, 1.0)]
    carrier = carrier_of(encodings)
    assert carrier.own == 2 and carrier.first == [1, 2, 3]
    assert carrier_of([encodings[2], Encoded(context + [8, 9], 3, 1.0)]) is None, "two multi-token choices"
    rows = [carrier] * 4 + [None]
    batch = collate([carrier.encoding] * 4 + [encodings[0]], pad_id=0)
    z = torch.randn(5, 3, vocab, generator=torch.Generator().manual_seed(0))
    z[0, :, [3, 4, 9]] += 20.0  # the three-token choice wins
    z[1, 0, 2] += 20.0
    z[2, 0, [1, 2]] = z[2, 0, [1, 2]].max() + 5.0  # an exact tie: the lower label
    choose = PseudoLabelChoice(rows, "cpu")
    moved = choose(batch, z)
    logp = torch.log_softmax(z.double(), dim=-1)
    for b in range(4):
        want = [logp[b, 0, 1], logp[b, 0, 2], logp[b, 0, 3] + logp[b, 1, 4] + logp[b, 2, 9]]
        assert choose.labels[b] == int(np.argmax([w.item() for w in want]))
        np.testing.assert_allclose(choose.logprobs[b], want, rtol=1e-6, atol=1e-5)  # float32 log-probs
    assert choose.labels[0] == 2 and choose.labels[1] == 1 and choose.labels[2] == 0
    assert choose.labels[4] == NO_CHOICE and torch.equal(moved.targets[4], batch.targets[4])
    assert torch.equal(moved.targets[0], batch.targets[0]) and torch.equal(moved.weights[0], batch.weights[0])
    for b in (1, 2):
        assert moved.targets[b, 0] == carrier.first[choose.labels[b]]
        assert moved.weights[b].tolist() == [1.0, 0.0, 0.0]
    assert isinstance(moved, Batch) and torch.equal(moved.positions, batch.positions)


def test_an_interrupted_fused_run_resumes_to_the_same_stores(tiny_gpt2, tuned_gpt2, tmp_path, monkeypatch, counted):
    """Killed while the α = 1/2 store is filled (θf's store, filled first, is complete): the resumed
    run reads the labels θf's store recorded."""
    _use_spec(monkeypatch, ONE_TOKEN)
    config = _config(tiny_gpt2, tuned_gpt2, params="changed", dim=200, checkpoints=2)
    reference = build_feature_stores(config, _corpus(), None, tmp_path / "ref")
    real_write, calls = FeatureStore.write_rows, []

    def dying_write(self, *args, **kwargs):
        if self.alpha == 0.5 and calls:
            raise KeyboardInterrupt("simulated kill")
        calls.append(self.alpha) if self.alpha == 0.5 else None
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_rows", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_feature_stores(config, _corpus(), None, tmp_path / "run")
    monkeypatch.setattr(FeatureStore, "write_rows", real_write)
    resumed = build_feature_stores(config, _corpus(), None, tmp_path / "run")
    assert counted == []
    for a, b in zip(resumed, reference):
        for column in COLUMNS:
            np.testing.assert_array_equal(getattr(a, column), getattr(b, column))


@pytest.mark.parametrize("params", ["head", "changed"])
def test_language_modelling_runs_theta_f_once_and_its_loss_is_the_label_stage_s(params, tiny_gpt2, tuned_gpt2,
                                                                                 tmp_path, monkeypatch, counted):
    """An LM task has no choices: θf's pseudo-target is its loss (the pipeline's label stage,
    ``example_losses``), which the feature forward stores; the twin is the same single pass."""
    _use_spec(monkeypatch, MSMARCO)
    config = _config(tiny_gpt2, tuned_gpt2, params=params, dim=256, max_length=16, task="approx_msmarco")
    fused = build_feature_store(config, _corpus(), None, tmp_path / "fused")
    two = build_feature_store(config, _corpus(), None, tmp_path / "two", fused=False)
    assert counted == []
    for column in COLUMNS:
        np.testing.assert_array_equal(getattr(fused, column), getattr(two, column))
    assert (fused.labels == NO_LABEL).all()
    want = example_losses(load_model(tuned_gpt2), load_tokenizer(tiny_gpt2), MSMARCO, TEXTS, None, 3, 16)
    np.testing.assert_allclose(fused.loss, want, rtol=FLOAT32_ROUNDING)


# A full-finetune update of 1e-6 on weights of scale 0.02: below bf16's spacing there (2⁻¹³ ≈ 1.2e-4)
# and fp16's (2⁻¹⁶ ≈ 1.5e-5), so weights loaded in either dtype round θ0 and θf alike.
SMALL_UPDATE = 1e-6


@pytest.fixture(scope="module")
def small_update_pair(tiny_gpt2, tmp_path_factory):
    model = load_model(tiny_gpt2)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(5)
        for module in linear_modules(model).values():
            module.weight.add_(SMALL_UPDATE * torch.randn(module.weight.shape, generator=generator))
    path = tmp_path_factory.mktemp("small-update")
    model.save_pretrained(path, safe_serialization=True)
    load_tokenizer(tiny_gpt2).save_pretrained(path)
    return tiny_gpt2, str(path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("params", ["head", "changed"])
def test_the_target_of_a_half_precision_run_is_the_float32_target(params, dtype, small_update_pair, tmp_path,
                                                                   monkeypatch):
    _use_spec(monkeypatch, ONE_TOKEN)
    base, tuned = small_update_pair
    stores = {d: build_feature_store(_config(base, tuned, params=params, dim=256, dtype=d), _corpus(4), None,
                                     tmp_path / d) for d in ("float32", dtype)}
    assert stores[dtype].meta["params"] == stores["float32"].meta["params"]
    np.testing.assert_allclose(stores[dtype].target, stores["float32"].target, rtol=FLOAT32_ROUNDING, atol=1e-12)
    half0, half_f = load_model(base, dtype), load_model(tuned, dtype)
    names = stores["float32"].meta["params"]
    mods0, mods_f = linear_modules(half0), linear_modules(half_f)
    projector = make_projector("kronecker", {n: layer_shape(mods_f[n]) for n in names}, 256)
    rounded = projector.project_delta({n: weight_delta(mods0[n], mods_f[n]) for n in names}).numpy()
    target = stores["float32"].target
    assert np.linalg.norm(rounded - target) > 0.5 * np.linalg.norm(target), "the half-precision weights lose it"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("params", ["head", "changed"])
def test_fused_factors_of_a_half_precision_model_are_float32(params, dtype, tiny_gpt2, tuned_gpt2):
    """A bf16/fp16 θf's fused factors are float32 and so is their projection (the sum over tokens);
    where it picks the float32 model's label, its features are within half precision's rounding of
    that model's (test_bf16_features.py's tolerance)."""
    tokenizer = load_tokenizer(tiny_gpt2)
    rows = carriers(tokenizer, ONE_TOKEN, TEXTS, 48)
    batch = collate([r.encoding for r in rows], tokenizer.pad_token_id)
    results = {}
    for run in (dtype, "float32"):
        model = load_model(tuned_gpt2, run)
        names = [head_name(model)] if params == "head" else list(linear_modules(model))
        choose = PseudoLabelChoice(rows, "cpu")
        if params == "head":
            loss, factors = head_factors(model, batch, names[0], choose=choose)
        else:
            loss, factors = layer_factors(model, batch, names, choose=choose)
        assert loss.dtype == torch.float32
        assert all(f.delta.dtype == f.x.dtype == torch.float32 for f in factors.values())
        shapes = {n: (f.delta.shape[-1], f.x.shape[-1]) for n, f in factors.items()}
        features = make_projector("kronecker", shapes, 512).project(factors)
        assert features.dtype == torch.float32
        results[run] = choose.labels, features
    (labels16, half), (labels32, f32) = results[dtype], results["float32"]
    same = torch.from_numpy(labels16 == labels32)
    assert same.sum() >= len(rows) - 1
    assert _relative(half[same], f32[same]) < 2e-2
