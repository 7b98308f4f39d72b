"""The one encoding rule against its oracle, lm-eval's own HFLM, on a tokenizer that adds no BOS
and on one whose post-processor prepends BOS (as Llama-family tokenizers do).

For each tokenizer and each ``add_bos_token`` HFLM accepts (unset, True, False), the token lists
HFLM hands to ``_loglikelihood_tokens`` for loglikelihood and loglikelihood_rolling requests must be
the (context, continuation) ids of ``features/encoding.py`` and of the training rows; the loss the
gradient features differentiate must be the loss training minimises, and both must be lm-eval's
score of the same example.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TOKENIZER_TEXT, build_tiny_model

from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.encoding import (
    collate,
    encode_classification,
    encode_examples,
    encode_lm,
    flatten,
    encode_pair,
    prefix_token_id,
    tok_encode,
)
from lm_eval_approx.features.gradients import head_factors
from lm_eval_approx.features.losses import example_losses
from lm_eval_approx.models.layers import head_name
from lm_eval_approx.models.loading import load_model, load_tokenizer
from _specs import AGNEWS, MSMARCO
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
from lm_eval_approx.training.loss import batch_example_losses, full_example_losses
from lm_eval_approx.training.rendering import IGNORE_INDEX, render_examples, training_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["The team won the final match of the season.", "Stocks fell as the central bank raised rates.",
         "Leaders met in Geneva.", "A new chip doubles the speed of scientific computing."]
LABELS = [1, 2, 0, 3]
# Long enough that nothing here is clipped: HFLM's inputs and ours are then the same, token for token.
MAX_LENGTH = 256
BOS = "<s>"
ADD_BOS = [None, True, False]


def _bos_tokenizer():
    """The tiny byte-level BPE of conftest, plus a BOS token ``<s>`` that its post-processor prepends."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>", BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TOKENIZER_TEXT * 4, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny_bos_llama(tmp_path_factory) -> str:
    """A saved tiny random Llama whose tokenizer prepends BOS to every encoding."""
    folder = tmp_path_factory.mktemp("tiny-bos-llama")
    tokenizer = _bos_tokenizer()
    build_tiny_model("llama", len(tokenizer), seed=1).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_bos_llama"], ids=["no-bos", "bos"])
def folder(request) -> str:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def hflm_cache():
    return {}


def _hflm(cache, folder: str, add_bos_token, max_length: int = MAX_LENGTH) -> HFLM:
    """HFLM on ``folder`` as lm-eval builds it from ``--model_args`` (one per setting and module)."""
    key = (folder, add_bos_token, max_length)
    if key not in cache:
        cache[key] = HFLM(pretrained=folder, device="cpu", batch_size=4, max_length=max_length,
                          add_bos_token=add_bos_token)
    return cache[key]


def _captured(lm: HFLM, call, instances) -> list[tuple[list[int], list[int]]]:
    """The (context ids, continuation ids) HFLM passes to ``_loglikelihood_tokens`` for ``instances``."""
    seen = []

    def record(requests, **_kwargs):
        seen.extend((list(ctx), list(cont)) for _key, ctx, cont in requests)
        return [(0.0, False)] * len(requests)

    lm._loglikelihood_tokens = record
    try:
        getattr(lm, call)(instances, disable_tqdm=True)
    finally:
        del lm._loglikelihood_tokens
    return seen


def _pair_requests(tokenizer) -> list[tuple[str, str]]:
    """Task requests plus the corners of HFLM's rule: trailing spaces, empty contexts, a continuation
    and a context that start with the text of the prefix token."""
    prefix = tokenizer.decode(prefix_token_id(tokenizer))
    pairs = [(AGNEWS.context(t), c) for t in TEXTS for c in AGNEWS.continuations()]
    return pairs + [("Article: team match\nTopic:  ", "Sports"), ("Topic: \n ", "World news"), ("", " World"),
                    ("", " Sci/Tech"), ("", prefix + " World"), (prefix + "Article: x\nTopic:", " Sports")]


def _rolling_texts(tokenizer) -> list[str]:
    prefix = tokenizer.decode(prefix_token_id(tokenizer))
    return [MSMARCO.context(t) for t in TEXTS] + [prefix + " quick brown fox", "x"]


def _split(ids: list[int], start: int) -> tuple[list[int], list[int]]:
    return ids[:start], ids[start:]


@pytest.mark.parametrize("add_bos_token", ADD_BOS, ids=["unset", "true", "false"])
def test_pairs_and_tokens_are_hflms(folder, hflm_cache, add_bos_token):
    lm, tokenizer = _hflm(hflm_cache, folder, add_bos_token), load_tokenizer(folder)
    assert prefix_token_id(tokenizer) == lm.prefix_token_id
    pairs = _pair_requests(tokenizer)
    theirs = _captured(lm, "loglikelihood", [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    assert [encode_pair(tokenizer, c, x, add_bos_token) for c, x in pairs] == theirs
    for text in [c for c, _ in pairs] + _rolling_texts(tokenizer):
        assert tok_encode(tokenizer, text, add_bos_token) == lm.tok_encode(text)
        if text:
            assert tuple(encode_pair(tokenizer, text, " World", add_bos_token)) == lm._encode_pair(text, " World")


@pytest.mark.parametrize("add_bos_token", ADD_BOS, ids=["unset", "true", "false"])
def test_task_encodings_and_training_rows_are_hflms(folder, hflm_cache, add_bos_token):
    """Classification: every (document, label) request; language modelling: the rolling window,
    whose context is the prefix token. Features and training rows carry the same split."""
    lm, tokenizer = _hflm(hflm_cache, folder, add_bos_token), load_tokenizer(folder)
    probes = [(t, y) for t in TEXTS for y in range(AGNEWS.num_classes)]
    requests = [Instance("loglikelihood", {}, (AGNEWS.context(t), AGNEWS.continuations()[y]), i)
                for i, (t, y) in enumerate(probes)]
    theirs = _captured(lm, "loglikelihood", requests)
    ours = [encode_classification(tokenizer, AGNEWS, t, y, MAX_LENGTH, add_bos_token) for t, y in probes]
    assert [_split(e.ids, e.start) for e in ours] == theirs
    examples = [SelectedExample(id=str(i), text=t, label=y) for i, (t, y) in enumerate(probes)]
    rows = render_examples(tokenizer, AGNEWS, examples, MAX_LENGTH, add_bos_token)
    assert [_split(r.input_ids, r.labels.count(IGNORE_INDEX)) for r in rows] == theirs
    assert all(r.labels[r.labels.count(IGNORE_INDEX):] == cont for r, (_, cont) in zip(rows, theirs))

    texts = _rolling_texts(tokenizer)
    rolling = _captured(lm, "loglikelihood_rolling", [Instance("loglikelihood_rolling", {}, (t,), i)
                                                      for i, t in enumerate(texts)])
    assert [[_split(w.ids, w.start) for w in encode_lm(tokenizer, MSMARCO, t, MAX_LENGTH, add_bos_token)]
            for t in texts] == [[pair] for pair in rolling]
    rows = render_examples(tokenizer, MSMARCO, [SelectedExample(id=str(i), text=t) for i, t in enumerate(texts)],
                           MAX_LENGTH, add_bos_token)
    assert [_split(r.input_ids, 1) for r in rows] == rolling


# Ids per window here; HFLM's max_length is one less (``encoding.py``). Every long text spans windows.
WINDOW = 9
LONG_TEXTS = [" ".join(TEXTS), TEXTS[3] + " " + TEXTS[0], "x"]


@pytest.mark.parametrize("add_bos_token", ADD_BOS, ids=["unset", "true", "false"])
def test_long_texts_are_hflms_rolling_windows(folder, hflm_cache, add_bos_token):
    """A text longer than the window: our windows are the requests HFLM's ``loglikelihood_rolling``
    makes at max_length − 1, the training rows carry the same splits, and the loss (features and
    training alike) is lm-eval's −rolling loglikelihood / n."""
    lm, tokenizer = _hflm(hflm_cache, folder, add_bos_token, WINDOW - 1), load_tokenizer(folder)
    instances = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(LONG_TEXTS)]
    theirs = _captured(lm, "loglikelihood_rolling", instances)
    documents = [encode_lm(tokenizer, MSMARCO, t, WINDOW, add_bos_token) for t in LONG_TEXTS]
    assert [len(d) for d in documents][:2] > [2, 2] and len(documents[2]) == 1
    assert [_split(w.ids, w.start) for d in documents for w in d] == theirs
    assert max(len(w.ids) for d in documents for w in d) == WINDOW
    examples = [SelectedExample(id=str(i), text=t) for i, t in enumerate(LONG_TEXTS)]
    rows = render_examples(tokenizer, MSMARCO, examples, WINDOW, add_bos_token)
    assert [_split(r.input_ids, r.labels.count(IGNORE_INDEX)) for r in rows] == theirs

    model = load_model(folder)
    counts = [len(tok_encode(tokenizer, t, add_bos_token)) for t in LONG_TEXTS]
    want = [-ll / n for ll, n in zip(lm.loglikelihood_rolling(instances, disable_tqdm=True), counts)]
    ours = example_losses(model, tokenizer, MSMARCO, LONG_TEXTS, max_length=WINDOW, add_bos_token=add_bos_token)
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        per_row = full_example_losses(model, training_batch(rows, tokenizer.pad_token_id), MSMARCO.kind)
    owner = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
    trained = np.bincount(owner, weights=(per_row * torch.tensor([r.weight for r in rows])).numpy())
    np.testing.assert_allclose(trained, want, rtol=1e-4, atol=1e-5)


def test_the_bos_tokenizer_really_adds_bos(tiny_bos_llama, tiny_llama):
    """The oracle cases differ: unset, the BOS tokenizer's contexts start with BOS and its rolling
    input with BOS BOS; the plain one adds nothing."""
    bos, plain = load_tokenizer(tiny_bos_llama), load_tokenizer(tiny_llama)
    enc = encode_classification(bos, AGNEWS, TEXTS[0], 0, MAX_LENGTH)
    assert enc.ids[0] == bos.bos_token_id != enc.ids[1]
    assert encode_lm(bos, MSMARCO, TEXTS[0], MAX_LENGTH)[0].ids[:3].count(bos.bos_token_id) == 2
    assert encode_lm(bos, MSMARCO, TEXTS[0], MAX_LENGTH, add_bos_token=False)[0].ids[1] != bos.bos_token_id
    assert encode_classification(plain, AGNEWS, TEXTS[0], 0, MAX_LENGTH).ids[0] != plain.bos_token_id
    assert encode_classification(plain, AGNEWS, TEXTS[0], 0, MAX_LENGTH, add_bos_token=True).ids[0] == 0


@pytest.mark.parametrize("spec_name", ["approx_agnews", "approx_msmarco"])
def test_feature_loss_is_the_training_loss(folder, spec_name):
    """On the same examples: ``features/losses.py`` and the head factors' loss equal the per-example
    loss training minimises on ``training/rendering.py`` rows, full logits and head-position paths."""
    spec = get_task_spec(spec_name)
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    labels = LABELS if spec.kind == AGNEWS.kind else None
    features = example_losses(model, tokenizer, spec, TEXTS, labels, batch_size=3, max_length=MAX_LENGTH)
    encoded, _ = flatten(encode_examples(tokenizer, spec, TEXTS, labels, MAX_LENGTH))
    head_loss, _ = head_factors(model, collate(encoded, tokenizer.pad_token_id), head_name(model))
    examples = [SelectedExample(id=str(i), text=t, label=None if labels is None else labels[i])
                for i, t in enumerate(TEXTS)]
    batch = training_batch(render_examples(tokenizer, spec, examples, MAX_LENGTH), tokenizer.pad_token_id)
    with torch.no_grad():
        full = full_example_losses(model, batch, spec.kind)
        head = batch_example_losses(model, batch, spec.kind, head_positions=True)
    np.testing.assert_allclose(features, full.numpy(), rtol=1e-5)
    np.testing.assert_allclose(head_loss.numpy(), full.numpy(), rtol=1e-5)
    np.testing.assert_allclose(head.numpy(), full.numpy(), rtol=1e-5)


@pytest.mark.parametrize("add_bos_token", [None, True], ids=["unset", "true"])
def test_feature_loss_is_lm_evals_score(folder, hflm_cache, add_bos_token):
    """The losses are lm-eval's: −loglikelihood of the label, −loglikelihood_rolling / n tokens."""
    lm, tokenizer, model = _hflm(hflm_cache, folder, add_bos_token), load_tokenizer(folder), load_model(folder)
    requests = [Instance("loglikelihood", {}, (AGNEWS.context(t), AGNEWS.continuations()[y]), i)
                for i, (t, y) in enumerate(zip(TEXTS, LABELS))]
    theirs = [-ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    ours = example_losses(model, tokenizer, AGNEWS, TEXTS, LABELS, max_length=MAX_LENGTH, add_bos_token=add_bos_token)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    texts = [MSMARCO.context(t) for t in TEXTS]
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)],
                                       disable_tqdm=True)
    counts = [len(tok_encode(tokenizer, t, add_bos_token)) for t in texts]
    ours = example_losses(model, tokenizer, MSMARCO, texts, max_length=MAX_LENGTH, add_bos_token=add_bos_token)
    np.testing.assert_allclose(ours, [-ll / n for ll, n in zip(rolling, counts)], rtol=1e-4, atol=1e-5)


def test_bad_add_bos_token_is_a_named_error(tiny_tokenizer):
    with pytest.raises(ConfigError, match="add_bos_token"):
        tok_encode(tiny_tokenizer, "x", "yes")
    without_bos = _without_bos(tiny_tokenizer)
    with pytest.raises(ConfigError, match="add_bos_token"):
        tok_encode(without_bos, "x", True)
    assert tok_encode(without_bos, "x") == tok_encode(tiny_tokenizer, "x")


def _without_bos(tokenizer):
    """A copy of ``tokenizer`` that has no BOS token (EOS is then the prefix token)."""
    import copy

    twin = copy.deepcopy(tokenizer)
    twin.bos_token = None
    return twin
