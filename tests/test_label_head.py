"""params=head_labels: exact head gradients of the label-restricted loss against one backward per example,
the target against materialised weights, planted-document recovery by `select`, and the named errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import save_tiny_model
from torch import nn

from lm_eval_approx.data.corpus import Corpus
from lm_eval_approx.errors import ConfigError, ModelPairError
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.features.build import build_feature_store, build_feature_stores
from lm_eval_approx.models.layers import head_name, oriented_weight
from lm_eval_approx.features.label_head import (
    HEAD_LABELS,
    first_label_encodings,
    label_head_factors,
    label_token_ids,
)
from lm_eval_approx.features.encoding import collate, encode_classification, encode_examples, flatten
from lm_eval_approx.models.loading import load_model, load_tokenizer
from lm_eval_approx.strategies.pool import build_pool
from lm_eval_approx.strategies.registry import select
from _specs import AGNEWS, MSMARCO

TEXTS = ["The team won the final match of the season.", "Stocks fell as the central bank raised rates.",
         "Leaders met in Geneva.", "A new chip doubles the speed of scientific computing.",
         "Peace talks resumed in the capital after a long pause.", "Shares of the chip maker rose.",
         "The striker scored twice.", "Scientists found water on a distant planet."]
MAX_LENGTH = 48
F16 = {"rtol": 2e-3, "atol": 2e-4}
F32 = {"rtol": 1e-4, "atol": 1e-6}


def _corpus(texts=TEXTS, labels=None):
    labels = [i % AGNEWS.num_classes for i in range(len(texts))] if labels is None else labels
    return Corpus(ids=[f"doc:{i}" for i in range(len(texts))], texts=list(texts), labels=list(labels),
                  sources=["test"] * len(texts))


def _config(base, tuned, **kw):
    return FeatureConfig(base=base, finetuned=tuned, task="approx_agnews", params=HEAD_LABELS, batch_size=3,
                         max_length=MAX_LENGTH, **kw)


def _lora_adapter(base: str, folder, targets) -> str:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=targets, lora_dropout=0.0, init_lora_weights=False)
    get_peft_model(load_model(base), config).save_pretrained(folder)
    return str(folder)


def _materialised(tuned, alpha: float = 1.0) -> nn.Module:
    """A plain model whose every weight is the effective weight W + α·s·B A, with its own (untied) head:
    the obvious model to differentiate (merge_and_unload would write the head update into the tied
    input embedding too)."""
    plain = copy.deepcopy(tuned.get_base_model() if hasattr(tuned, "get_base_model") else tuned)
    for name, module in list(plain.named_modules()):
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            weight = module.base_layer.weight.detach().clone()
            for adapter in module.active_adapters:
                weight += alpha * module.scaling[adapter] * (module.lora_B[adapter].weight @ module.lora_A[adapter].weight)
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight = nn.Parameter(weight)
            parent, _, leaf = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, leaf, linear)
    head = plain.get_output_embeddings()
    head.weight = nn.Parameter(oriented_weight(head).detach().clone())
    return plain.eval()


def _oracle(model: nn.Module, tokenizer, texts, labels):
    """Per example: −log softmax over the C first label tokens at the position predicting the first label
    token, one backward on the full input, and the gradient of the (untied) head weight, all V rows."""
    twin = copy.deepcopy(model).requires_grad_(True)
    head = twin.get_output_embeddings()
    head.weight = nn.Parameter(oriented_weight(head).detach().clone())
    out = []
    for text, label in zip(texts, labels):
        encodings = [encode_classification(tokenizer, AGNEWS, text, c, MAX_LENGTH) for c in range(AGNEWS.num_classes)]
        rows = [e.ids[e.start] for e in encodings]
        enc = encodings[label]
        twin.zero_grad()
        logits = twin(input_ids=torch.tensor([enc.ids])).logits[0, enc.start - 1].float()
        loss = -torch.log_softmax(logits[rows], dim=-1)[label]
        loss.backward()
        out.append((loss.item(), head.weight.grad.clone(), rows))
    return out


@pytest.fixture(scope="module")
def llama_lora(tiny_llama, tmp_path_factory):
    return _lora_adapter(tiny_llama, tmp_path_factory.mktemp("lora-head"), ["q_proj", "v_proj", "lm_head"])


@pytest.fixture(scope="module")
def tuned_gpt2(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tuned-gpt2"), "gpt2", seed=1)


def test_factors_equal_per_example_backward_and_slow_twin(tiny_llama, llama_lora, one_torch_thread):
    tuned, tokenizer = load_model(llama_lora), load_tokenizer(tiny_llama)
    rows = label_token_ids(tokenizer, AGNEWS)
    labels = [1, 2, 0, 3, 2, 1]
    encoded = first_label_encodings(flatten(encode_examples(tokenizer, AGNEWS, TEXTS[:6], labels, MAX_LENGTH))[0])
    assert len({len(e.ids) for e in encoded}) > 1, "the batch must contain padding"
    batch = collate(encoded, tokenizer.pad_token_id)
    head = head_name(tuned)
    loss, factors = label_head_factors(tuned, batch, head, rows, labels)
    _, slow = label_head_factors(tuned, batch, head, rows, labels, keep_positions=False)
    torch.testing.assert_close(factors[head].gradient(), slow[head].gradient(), **F32)
    grads = factors[head].gradient()
    assert grads.shape == (6, AGNEWS.num_classes, 32)
    for i, (want_loss, want, want_rows) in enumerate(_oracle(_materialised(tuned), tokenizer, TEXTS[:6], labels)):
        assert want_rows == rows and loss[i].item() == pytest.approx(want_loss, rel=1e-5)
        torch.testing.assert_close(grads[i], want[rows], **F32)
        others = torch.ones(want.shape[0], dtype=torch.bool)
        others[rows] = False
        assert not want[others].any(), "the restricted loss has no gradient outside the label rows"
        assert factors[head].sqnorm()[i].item() == pytest.approx(want[rows].pow(2).sum().item(), rel=1e-5)


def test_lora_store_features_and_target_at_theta_f_and_checkpoint(tiny_llama, llama_lora, tmp_path,
                                                                   one_torch_thread):
    stores = build_feature_stores(_config(tiny_llama, llama_lora, checkpoints=2), _corpus(), None, tmp_path / "f")
    tuned, tokenizer = load_model(llama_lora), load_tokenizer(tiny_llama)
    rows = label_token_ids(tokenizer, AGNEWS)
    base_head = oriented_weight(load_model(tiny_llama).get_output_embeddings()).detach()
    want_target = (base_head - _materialised(tuned).get_output_embeddings().weight.detach())[rows]
    assert [s.alpha for s in stores] == [0.5, 1.0]
    for store, alpha in zip(stores, (0.5, 1.0)):
        assert store.dim == AGNEWS.num_classes * 32 and store.meta["projection"] == "identity"
        assert store.meta["label_token_ids"] == rows and store.meta["sqnorm"] == "exact"
        np.testing.assert_allclose(store.target, want_target.reshape(-1).numpy(), **F32)
        oracle = _oracle(_materialised(tuned, alpha), tokenizer, TEXTS, store.labels)
        for i, (loss, grad, _) in enumerate(oracle):
            assert store.loss[i] == pytest.approx(loss, rel=1e-5)
            assert store.sqnorm[i] == pytest.approx(grad[rows].pow(2).sum().item(), rel=1e-5)
            np.testing.assert_allclose(store.features[i].astype(np.float32), grad[rows].reshape(-1).numpy(), **F16)


def test_full_finetune_target_is_the_tied_head_rows(tiny_gpt2, tuned_gpt2, tmp_path, one_torch_thread):
    store = build_feature_store(_config(tiny_gpt2, tuned_gpt2, labels="true"), _corpus(), None, tmp_path / "f")
    rows = label_token_ids(load_tokenizer(tiny_gpt2), AGNEWS)
    base, tuned = load_model(tiny_gpt2), load_model(tuned_gpt2)
    assert base.lm_head.weight is base.transformer.wte.weight, "the fixture must have a tied head"
    want = (base.transformer.wte.weight - tuned.transformer.wte.weight)[rows].detach()
    np.testing.assert_allclose(store.target, want.reshape(-1).numpy(), **F32)
    np.testing.assert_array_equal(store.labels, _corpus().labels)
    for i, (_, grad, _) in enumerate(_oracle(tuned, load_tokenizer(tiny_gpt2), TEXTS, store.labels)):
        np.testing.assert_allclose(store.features[i].astype(np.float32), grad[rows].reshape(-1).numpy(), **F16)


def test_select_recovers_planted_documents(tiny_gpt2, tmp_path, one_torch_thread):
    """θf = θ0 − η Σ_{i∈S} ∇L_i(θ0) on the label rows: the target is the planted documents' summed
    gradient, and greedy `select` with k = |S| returns exactly S."""
    planted, eta = [1, 4, 6], 1e-3
    labels = [0, 1, 2, 3, 0, 1, 2, 3]
    base, tokenizer = load_model(tiny_gpt2), load_tokenizer(tiny_gpt2)
    oracle = _oracle(base, tokenizer, TEXTS, labels)
    step = sum(oracle[i][1] for i in planted)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.lm_head.weight -= eta * step
    tuned.save_pretrained(tmp_path / "tuned", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "tuned")
    store = build_feature_store(_config(tiny_gpt2, str(tmp_path / "tuned")), _corpus(labels=labels), labels,
                                tmp_path / "f")
    picks = select("select", build_pool(_corpus(labels=labels), [store]), len(planted)).indices
    assert sorted(int(i) for i in picks) == planted


def test_language_modelling_task_and_unchanged_head_are_named_errors(tiny_llama, tmp_path, tiny_tokenizer):
    with pytest.raises(ConfigError, match="classification"):
        FeatureConfig(base="a", finetuned="b", task="approx_msmarco", params=HEAD_LABELS)
    with pytest.raises(ConfigError, match="classification"):
        label_token_ids(tiny_tokenizer, MSMARCO)
    assert FeatureConfig(base="a", finetuned="b", params=HEAD_LABELS).param_names is None
    no_head = _lora_adapter(tiny_llama, tmp_path / "no-head", ["q_proj", "v_proj"])
    with pytest.raises(ModelPairError, match="target θ0 − θf is zero"):
        build_feature_store(_config(tiny_llama, no_head), _corpus(TEXTS[:2]), None, tmp_path / "f")
