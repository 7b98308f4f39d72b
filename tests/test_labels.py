"""Pseudo-labels and task losses against one unpadded forward per (text, label)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_model

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.encoding import encode_classification, encode_lm
from lm_eval_approx.features.losses import example_losses
from lm_eval_approx.features.pseudo_labels import pseudo_label
from _specs import AGNEWS, MSMARCO

TEXTS = ["The team won the final match of the season.", "Stocks fell.", "Leaders met in Geneva to discuss peace.",
         "A new chip doubles the speed of scientific computing.", "x", "Sports Business World news " * 3]


def _tokens(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Summed log p(continuation | context), one sequence, no padding: the obvious definition."""
    ctx = _tokens(tokenizer, context)
    cont = _tokens(tokenizer, context + continuation)[len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
    return sum(logp[len(ctx) + j - 1, tok].item() for j, tok in enumerate(cont))


@pytest.fixture(scope="module")
def llama(tiny_tokenizer):
    return build_tiny_model("llama", len(tiny_tokenizer), seed=5)


def test_verbalisers_are_multi_token(tiny_tokenizer):
    lengths = [len(e.ids) - e.start for e in (encode_classification(tiny_tokenizer, AGNEWS, "a b", c, 64)
                                              for c in range(4))]
    assert max(lengths) >= 3 and min(lengths) == 1


@pytest.mark.parametrize("shared_context", [True, False])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_pseudo_label_equals_unpadded_argmax(llama, tiny_tokenizer, batch_size, shared_context):
    """Both the shared-context fast path and one row per (text, choice) equal the unpadded definition."""
    result = pseudo_label(llama, tiny_tokenizer, AGNEWS, TEXTS, batch_size=batch_size, shared_context=shared_context)
    want = np.array([[_logprob(llama, tiny_tokenizer, AGNEWS.context(t), cont) for cont in AGNEWS.continuations()]
                     for t in TEXTS])
    np.testing.assert_allclose(result.logprobs, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.labels, want.argmax(axis=1))
    np.testing.assert_allclose(result.loss, -want.max(axis=1), rtol=1e-5)
    assert result.labels.dtype == np.int64 and result.loss.dtype == np.float32


def test_shared_context_runs_fewer_rows(llama, tiny_tokenizer):
    from lm_eval_approx.features.pseudo_labels import _carrier_rows

    encodings = [encode_classification(tiny_tokenizer, AGNEWS, TEXTS[0], c, 64) for c in range(4)]
    rows, reads = _carrier_rows(encodings)
    multi = sum(len(e.ids) - e.start > 1 for e in encodings)
    assert len(rows) == max(multi, 1) < 4
    assert sorted(choice for r in reads for _, _, choice in r) == sorted(
        [c for c, e in enumerate(encodings) for _ in range(len(e.ids) - e.start)])


def test_example_losses_classification_and_lm(llama, tiny_tokenizer):
    labels = [3, 0, 1, 2, 3, 1]
    got = example_losses(llama, tiny_tokenizer, AGNEWS, TEXTS, labels, batch_size=4)
    want = [-_logprob(llama, tiny_tokenizer, AGNEWS.context(t), AGNEWS.continuations()[y]) for t, y in zip(TEXTS, labels)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got_lm = example_losses(llama, tiny_tokenizer, MSMARCO, TEXTS, None, batch_size=4)
    eos = tiny_tokenizer.eos_token
    clipped = [MSMARCO.clip(t) for t in TEXTS]
    want_lm = [-_logprob(llama, tiny_tokenizer, eos, t) / len(_tokens(tiny_tokenizer, t)) for t in clipped]
    np.testing.assert_allclose(got_lm, want_lm, rtol=1e-5)


def test_left_clipping_keeps_the_continuation(tiny_tokenizer):
    long_text = "word " * 200
    enc = encode_classification(tiny_tokenizer, AGNEWS, long_text, 3, max_length=20)
    full = encode_classification(tiny_tokenizer, AGNEWS, long_text, 3, max_length=4096)
    assert len(enc.ids) == 20 and enc.ids == full.ids[-20:] and len(enc.ids) - enc.start == 3
    windows = encode_lm(tiny_tokenizer, MSMARCO, long_text, max_length=16)
    n = len(tiny_tokenizer(MSMARCO.context(long_text))["input_ids"])
    assert len(windows[0].ids) == 16 and windows[0].start == 1 and all(len(w.ids) <= 16 for w in windows)
    assert sum(len(w.ids) - w.start for w in windows) == n and all(w.weight == pytest.approx(1 / n) for w in windows)


def test_trailing_space_moves_to_the_continuation(tiny_tokenizer):
    from dataclasses import replace

    spec = replace(AGNEWS, template="Article: {text}\nTopic: ", target_delimiter="")
    enc = encode_classification(tiny_tokenizer, spec, "a b", 1, max_length=64)
    assert enc.ids[enc.start:] == _tokens(tiny_tokenizer, " Sports")


def test_bad_inputs_raise(llama, tiny_tokenizer):
    with pytest.raises(ConfigError, match="classification"):
        pseudo_label(llama, tiny_tokenizer, MSMARCO, TEXTS)
    with pytest.raises(ConfigError, match="labels"):
        example_losses(llama, tiny_tokenizer, AGNEWS, TEXTS, None)
    with pytest.raises(ConfigError, match="0 ≤ label < 4"):
        example_losses(llama, tiny_tokenizer, AGNEWS, TEXTS[:1], [4])
    with pytest.raises(ConfigError, match="batch_size"):
        example_losses(llama, tiny_tokenizer, AGNEWS, TEXTS[:1], [0], batch_size=0)
    with pytest.raises(ConfigError, match="max_length"):
        encode_classification(tiny_tokenizer, AGNEWS, "a", 3, max_length=3)
    assert example_losses(llama, tiny_tokenizer, AGNEWS, [], []).shape == (0,)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_rows_score_every_choice_in_one_row_like_the_definition(tiny_tokenizer, arch):
    """The packed path (all choices of a document in one block-causal row) is the one used, runs one
    row per document, and equals the unpadded definition, across several chunks."""
    from lm_eval_approx.features import pseudo_labels as labels_module
    from lm_eval_approx.models.packing import pack_rows, packing_unsupported_reason

    model = build_tiny_model(arch, len(tiny_tokenizer), seed=3)
    assert packing_unsupported_reason(model) is None
    per_text = [[encode_classification(tiny_tokenizer, AGNEWS, t, c, 64) for c in range(4)] for t in TEXTS]
    rows, _ = pack_rows([(None, e.ids[: e.start], e.ids[e.start:]) for enc in per_text for e in enc], 64)
    assert len(rows) == len(TEXTS)
    packed = labels_module._packed_choice_logprobs(model, tiny_tokenizer, per_text, 4, 64)
    want = np.array([[_logprob(model, tiny_tokenizer, AGNEWS.context(t), cont) for cont in AGNEWS.continuations()]
                     for t in TEXTS])
    np.testing.assert_allclose(packed, want, rtol=1e-5, atol=1e-5)
    result = pseudo_label(model, tiny_tokenizer, AGNEWS, TEXTS, batch_size=3, chunk_size=2)
    np.testing.assert_allclose(result.logprobs, want, rtol=1e-5, atol=1e-5)


def test_a_packing_that_disagrees_falls_back_to_carrier_rows(llama, tiny_tokenizer, monkeypatch, caplog):
    """A mask that lets continuations see each other fails the self-check: the labels are still
    the definition's (carrier rows), and the fallback is logged."""
    from lm_eval_approx.models import packing

    plain_causal = packing.block_causal_mask
    monkeypatch.setattr(packing, "block_causal_mask",
                        lambda segments: plain_causal(torch.where(segments > 0, torch.zeros_like(segments), segments)))
    result = pseudo_label(llama, tiny_tokenizer, AGNEWS, TEXTS, batch_size=4)
    want = np.array([[_logprob(llama, tiny_tokenizer, AGNEWS.context(t), cont) for cont in AGNEWS.continuations()]
                     for t in TEXTS])
    np.testing.assert_allclose(result.logprobs, want, rtol=1e-5, atol=1e-5)
    assert "scoring without packing" in caplog.text
