"""Every model family users bring, end to end on tiny random models (``conftest.build_tiny_model``).

For each family θ0 is a random 2-layer model and θf either a full finetune (every weight of block 1
and the head moved) or a PEFT LoRA adapter on θ0 (every linear layer and the head). Each pair goes
through the pair check and pseudo-labels (packed scoring against one row per choice), the gradient
features of the head and of the changed layers, each fast path against its slow twin (the head at
the loss positions against full logits; factored per-example gradients, the batched Kronecker
projection and the feature store against one plain backward per example of θf written out as a
plain model), LoRA target resolution and a short retraining (the head-position loss against full
logits), FastHFLM against HFLM, and ``--model approx`` with θf in both forms.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_KINDS, build_tiny_model
from test_gradients import _oracle, _untied

from _specs import AGNEWS
from lm_eval_approx.data.corpus import Corpus
from lm_eval_approx.errors import ModelPairError
from lm_eval_approx.features.build import build_feature_store
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.features.encoding import collate, encode_examples, flatten, tok_encode
from lm_eval_approx.features.gradients import LayerShapeError, head_factors, layer_factors, token_rows
from lm_eval_approx.features.projection import make_projector
from lm_eval_approx.features.pseudo_labels import pseudo_label
from lm_eval_approx.models.layers import (
    canonical_name,
    changed_modules,
    head_name,
    layer_shape,
    linear_modules,
    oriented_weight,
    weight_delta,
)
from lm_eval_approx.models.loading import load_model, load_tokenizer
from lm_eval_approx.models.packing import packing_unsupported_reason
from lm_eval_approx.models.pairs import check_model_pair

TEXTS = ["The team won the final match of the season.", "Stocks fell as the central bank raised rates again.",
         "Leaders met", "A new chip doubles the speed of scientific computing in labs.",
         "Peace talks resumed in the capital.", "The striker scored twice."]
LABELS = [1, 2, 0, 3, 0, 1]
FORMS = ("full", "adapter")
ATOL, RTOL = 1e-5, 1e-4
F16 = {"rtol": 2e-3, "atol": 2e-4}
MAX_LENGTH = 48
DIM = 256
SCORE_ATOL = 1e-4
# BLOOM's ALiBi model takes no position ids, so packed rows cannot place their continuations.
UNPACKABLE = {"bloom"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class Pair:
    kind: str
    base: str
    full: str
    adapter: str

    def finetuned(self, form: str) -> str:
        return self.full if form == "full" else self.adapter


def _full_finetune(model):
    """θf as a full finetune: every weight of block 1 and the head moved (a tied head moves the embedding)."""
    from lm_eval_approx.training.model import block_index

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if block_index(name) == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
        head = model.get_output_embeddings().weight
        head.add_(0.1 * torch.randn(head.shape, generator=generator))
    return model


def _adapter(base: str, out: Path) -> str:
    """θf as a PEFT LoRA adapter on θ0: random A and B on every linear layer and the head."""
    from peft import LoraConfig, get_peft_model

    from lm_eval_approx.training.model import resolve_target_modules

    model = load_model(base)
    torch.manual_seed(2)
    config = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=resolve_target_modules(model, ("all-linear", "head")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = get_peft_model(model, config)
        with torch.no_grad():  # a finetune's update is small next to the weights
            for name, p in adapted.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.1)
        adapted.save_pretrained(out, save_embedding_layers=False)
    return str(out)


@pytest.fixture(scope="module", params=TINY_KINDS)
def pair(request, tmp_path_factory, tiny_tokenizer) -> Pair:
    root = tmp_path_factory.mktemp(f"family-{request.param}")
    model = build_tiny_model(request.param, len(tiny_tokenizer), seed=0)
    for name, m in (("base", model), ("full", _full_finetune(copy.deepcopy(model)))):
        m.save_pretrained(root / name, safe_serialization=True)
        tiny_tokenizer.save_pretrained(root / name)
    return Pair(request.param, str(root / "base"), str(root / "full"), _adapter(str(root / "base"), root / "adapter"))


def _plain_finetune(pair: Pair, form: str):
    """The slow twin's θf, a plain model: the full finetune itself, or θ0 with every LoRA layer's
    W + s·B A written in (a tied head untied first: the PEFT head update never reaches the input
    embedding)."""
    if form == "full":
        return load_model(pair.full)
    model0, model_f = load_model(pair.base), load_model(pair.adapter)
    plain = _untied(model0)
    mods0, mods_f, mods_p = linear_modules(model0), linear_modules(model_f), linear_modules(plain)
    with torch.no_grad():
        for name in changed_modules(model0, model_f):
            oriented_weight(mods_p[name]).sub_(weight_delta(mods0[name], mods_f[name]).materialise())
    return plain


def _batch(tokenizer):
    encoded, counts = flatten(encode_examples(tokenizer, AGNEWS, TEXTS, LABELS, MAX_LENGTH))
    assert counts == [1] * len(TEXTS) and len({len(e.ids) for e in encoded}) > 1, "one padded batch"
    return encoded, collate(encoded, tokenizer.pad_token_id)


def _close(got: torch.Tensor, want: torch.Tensor, name: str = "") -> None:
    """Equal up to float32 reordering: a PEFT forward (x A then B) and its merged twin (W + s·B A)
    differ by ~1e-5 of the largest entry, as do the sums of many terms of a projection."""
    atol = max(ATOL, RTOL * float(want.abs().max()))
    torch.testing.assert_close(got, want, atol=atol, rtol=RTOL, msg=lambda m: f"{name}: {m}")


def _requests(n_texts: int = 3):
    from lm_eval.api.instance import Instance

    pairs = [(AGNEWS.context(t), c) for t in TEXTS[:n_texts] for c in AGNEWS.continuations()]
    return [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]


def _assert_scores_equal(got, want) -> None:
    assert len(got) == len(want)
    for (lp, greedy), (lp_ref, greedy_ref) in zip(got, want, strict=True):
        assert lp == pytest.approx(lp_ref, abs=SCORE_ATOL) and greedy == greedy_ref


def _hflm(base: str, adapter: str, **kwargs):
    from lm_eval.models.huggingface import HFLM

    from lm_eval_approx.harness.tied_head import install

    install()  # HFLM's tie_weights() fails on a LoRA-wrapped tied head otherwise
    return HFLM(pretrained=base, peft=adapter, device="cpu", batch_size=4, max_length=MAX_LENGTH, **kwargs)


@pytest.mark.parametrize("form", FORMS)
def test_pair_check_and_pseudo_labels(pair, form, caplog):
    finetuned = pair.finetuned(form)
    for params in ("head", "changed"):
        check_model_pair(pair.base, finetuned, params)
    with pytest.raises(ModelPairError, match="zero"):
        check_model_pair(pair.base, pair.base, "changed")
    model_f, tokenizer = load_model(finetuned), load_tokenizer(pair.base)
    assert (packing_unsupported_reason(model_f) is None) == (pair.kind not in UNPACKABLE)
    with caplog.at_level(logging.WARNING):
        packed = pseudo_label(model_f, tokenizer, AGNEWS, TEXTS, batch_size=4, max_length=MAX_LENGTH)
    assert not [r for r in caplog.records if "differ" in r.getMessage()], "packing fell back"
    per_choice = pseudo_label(model_f, tokenizer, AGNEWS, TEXTS, batch_size=4, max_length=MAX_LENGTH,
                              shared_context=False)
    np.testing.assert_array_equal(packed.labels, per_choice.labels)
    np.testing.assert_allclose(packed.logprobs, per_choice.logprobs, atol=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_head_features_fast_path_equals_full_logits_and_backward(pair, form, tiny_tokenizer):
    """``head`` and ``head_labels`` (the loss restricted to the label tokens' head rows); Gemma2's
    soft-capped logits need δ through the cap."""
    from test_label_head import _oracle as label_oracle

    from lm_eval_approx.features.label_head import first_label_encodings, label_head_factors, label_token_ids

    model_f, plain = load_model(pair.finetuned(form)), _plain_finetune(pair, form)
    encoded, batch = _batch(tiny_tokenizer)
    head = head_name(model_f)
    with torch.no_grad():  # as callers may run it
        loss, fast = head_factors(model_f, batch, head)
    want_loss, slow = head_factors(model_f, batch, head, full_logits=True)
    _close(loss, want_loss, "loss")
    _close(fast[head].gradient(), slow[head].gradient(), head)
    for i, (want_loss, want) in enumerate(_oracle(plain, encoded, [head])):
        assert loss[i].item() == pytest.approx(want_loss, rel=1e-5)
        _close(fast[head].gradient()[i], want[head], f"{head}[{i}]")
    rows = label_token_ids(tiny_tokenizer, AGNEWS)
    first = collate(first_label_encodings(encoded), tiny_tokenizer.pad_token_id)
    loss, fast = label_head_factors(model_f, first, head, rows, LABELS)
    _, slow = label_head_factors(model_f, first, head, rows, LABELS, keep_positions=False)
    _close(fast[head].gradient(), slow[head].gradient(), "head_labels")
    for i, (want_loss, want, _) in enumerate(label_oracle(plain, tiny_tokenizer, TEXTS, LABELS)):
        assert loss[i].item() == pytest.approx(want_loss, rel=1e-5)
        _close(fast[head].gradient()[i], want[rows], f"head_labels[{i}]")


def test_flattened_token_rows_are_reshaped_and_other_layouts_are_named_errors(tiny_tokenizer):
    """OPT runs fc1/fc2 on the tokens flattened to (B·T, width): the rows are reshaped back to
    (B, T, width) in row-major order. A layer fed anything else, here sequence-first (T, B, width)
    rows as ChatGLM-style code does, cannot be split per example and is named, not a RuntimeError."""
    model = build_tiny_model("opt", len(tiny_tokenizer))
    seen = []
    handle = model.model.decoder.layers[0].fc1.register_forward_hook(lambda _m, args, _o: seen.append(args[0].dim()))
    _, batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    handle.remove()
    assert seen == [2], "OPT's MLP sees (B·T, width)"
    flat = torch.arange(30.0).reshape(10, 3)
    assert torch.equal(token_rows("fc1", "input", flat, (2, 5))[1, 2], flat[7])
    with pytest.raises(LayerShapeError, match=r"'x'.*shape \(2, 4, 3\)"):
        token_rows("x", "input", torch.zeros(2, 4, 3), (2, 5))
    llama = build_tiny_model("llama", len(tiny_tokenizer))
    layer = llama.model.layers[0].mlp.down_proj
    layer.register_forward_pre_hook(lambda _m, args: (args[0].transpose(0, 1),))
    layer.register_forward_hook(lambda _m, _args, out: out.transpose(0, 1))
    name = "model.layers.0.mlp.down_proj"
    with pytest.raises(LayerShapeError, match=f"{name}.*per-example gradients") as caught:
        layer_factors(llama, batch, [name])
    assert caught.value.name == name


@pytest.mark.parametrize("form", FORMS)
def test_changed_layer_features_equal_per_example_backward(pair, form, tiny_tokenizer, tmp_path):
    finetuned = pair.finetuned(form)
    model0, model_f = load_model(pair.base), load_model(finetuned)
    names = changed_modules(model0, model_f)
    assert head_name(model_f) in names and len(names) > 4, names
    encoded, batch = _batch(tiny_tokenizer)
    loss, factors = layer_factors(model_f, batch, names)
    oracle = _oracle(_plain_finetune(pair, form), encoded, names)
    for i, (want_loss, want) in enumerate(oracle):
        assert loss[i].item() == pytest.approx(want_loss, rel=1e-5)
        for name in names:
            _close(factors[name].gradient()[i], want[name], f"{name}[{i}]")
    mods0, mods_f = linear_modules(model0), linear_modules(model_f)
    projector = make_projector("kronecker", {n: layer_shape(mods_f[n]) for n in names}, DIM, seed=0)
    fast = projector.project(factors)
    slow = torch.stack([torch.cat([(projector.matrices(n)[0] @ want[n] @ projector.matrices(n)[1].t()).reshape(-1)
                                   for n in names]) for _, want in oracle])
    _close(fast, slow, "kronecker")
    corpus = Corpus(ids=[f"doc:{i}" for i in range(len(TEXTS))], texts=TEXTS, labels=LABELS,
                    sources=["test"] * len(TEXTS))
    config = FeatureConfig(base=pair.base, finetuned=finetuned, task="approx_agnews", params="changed", dim=DIM,
                           batch_size=4, max_length=MAX_LENGTH)
    store = build_feature_store(config, corpus, LABELS, tmp_path / "store")
    assert store.meta["params"] == names
    np.testing.assert_allclose(store.features.astype(np.float32), fast.numpy(), **F16)
    np.testing.assert_allclose(store.loss, loss.numpy(), rtol=1e-5)
    want_target = projector.project_delta({n: weight_delta(mods0[n], mods_f[n]) for n in names})
    np.testing.assert_allclose(store.target, want_target.numpy(), rtol=1e-4, atol=1e-6)


def test_lora_targets_and_short_retraining_score_alike_in_fast_hflm_and_hflm(pair, tmp_path):
    from peft.tuners.lora import LoraLayer

    from lm_eval_approx.data.selection_file import SelectedExample
    from lm_eval_approx.harness.fast_hflm import FastHFLM
    from lm_eval_approx.training.loop import save_training, train_model
    from lm_eval_approx.training.model import prepare_model
    from lm_eval_approx.training.loss import batch_example_losses
    from lm_eval_approx.training.recipe import TrainingRecipe
    from lm_eval_approx.training.rendering import normalise_weights, render_examples, training_batch

    recipe = TrainingRecipe(epochs=2, batch_size=4, learning_rate=1e-2, lora_rank=4, lora_dropout=0.0,
                            validation_fraction=0.0, target_modules=("all-linear", "head"))
    model, tokenizer = prepare_model(pair.base, recipe)
    adapted = {canonical_name(n) for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == set(linear_modules(load_model(pair.base))), "every projection, fused or not, and the head"
    examples = [SelectedExample(id=str(i), text=f"{TEXTS[i % 6]} Report {i}.", label=LABELS[i % 6], order=i)
                for i in range(12)]
    batch = training_batch(normalise_weights(render_examples(tokenizer, AGNEWS, examples[:6], 64)),
                           tokenizer.pad_token_id)
    with torch.no_grad():
        fast = batch_example_losses(model.eval(), batch, AGNEWS.kind, head_positions=True)
        slow = batch_example_losses(model, batch, AGNEWS.kind, head_positions=False)
    _close(fast, slow, "head-position loss")
    result = train_model(pair.base, AGNEWS, examples, recipe, tmp_path / "work", progress=False)
    losses = result.history.train_loss
    assert losses[-1] < losses[0], losses
    out = save_training(result, pair.base, AGNEWS, examples, recipe, tmp_path / "adapter")
    requests = _requests()
    want = _hflm(pair.base, str(out)).loglikelihood(requests, disable_tqdm=True)
    lm = FastHFLM(pretrained=pair.base, peft=str(out), device="cpu", batch_size=4, max_length=MAX_LENGTH)
    _assert_scores_equal(lm.loglikelihood(requests, disable_tqdm=True), want)
    assert lm._packing_ok is (True if pair.kind not in UNPACKABLE else None)
    base_only = _hflm(pair.base, None).loglikelihood(requests, disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(want, base_only)) > 1e-3, "the retraining changed nothing"


@pytest.mark.parametrize("form", FORMS)
def test_model_approx(pair, form, tiny_tokenizer, tmp_path, monkeypatch):
    """``--model approx`` as lm-eval builds it from ``--model_args``: a full θf with params=changed, an
    adapter θf with params=head and ``add_bos_token=True``, which reaches HFLM and the pipeline alike."""
    from lm_eval.api.registry import get_model

    from lm_eval_approx.data.selection_file import read_selection
    from lm_eval_approx.harness.registration import APPROX_MODEL, register_models

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "candidates.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{TEXTS[i % 6]} Candidate {i}."}) + "\n" for i in range(12)))
    params, bos = ("changed", "") if form == "full" else ("head", ",add_bos_token=True")
    register_models()
    lm = get_model(APPROX_MODEL).create_from_arg_string(
        f"base={pair.base},finetuned={pair.finetuned(form)},corpus={corpus},strategy=select,k=6,dim=64,"
        f"params={params},extract_batch_size=4,extract_max_length={MAX_LENGTH},max_length={MAX_LENGTH},"
        f"train_epochs=1,train_stop_on=validation_loss,train_validation_fraction=0.0{bos}",
        {"batch_size": 4, "device": "cpu"})
    assert len(read_selection(lm.approx_result.selection)) == 6
    assert lm.approx_config.params == params
    extra = {}
    if bos:
        extra["add_bos_token"] = True
        assert lm.add_bos_token is True and lm.approx_config.add_bos_token is True
        ids = tok_encode(tiny_tokenizer, "Leaders met", add_bos_token=True)
        assert lm.tok_encode("Leaders met") == ids and ids[0] == tiny_tokenizer.bos_token_id
    requests = _requests()
    want = _hflm(pair.base, str(lm.approx_result.adapter), **extra).loglikelihood(requests, disable_tqdm=True)
    _assert_scores_equal(lm.loglikelihood(requests, disable_tqdm=True), want)
