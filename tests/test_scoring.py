"""FastHFLM (one forward per distinct context) against its slow twin, lm-eval's own HFLM."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval_approx.models import packing
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.harness.fast_hflm import FastHFLM
from lm_eval_approx.models.packing import block_causal_mask, pack_rows

# Documents of the SmolLM2 check: enough for several batches of 4-way groups, quick in CI.
SLOW_DOCS = 24

ATOL = 1e-4
MAX_LENGTH = 48
CONTEXTS = [
    "Article: The team won the final match of the season.\nTopic:",
    "Article: Stocks fell as the central bank raised interest rates.\nTopic:",
    "Leaders met",
    "Article: " + "A new chip doubles the speed of scientific computing. " * 3 + "\nTopic:",
    "Article: " + "Stocks fell as the central bank raised interest rates. " * 8 + "\nTopic:",
]
SINGLE_TOKEN = [" World", " Sports"]
MULTI_TOKEN = [" Sci/Tech", " science technology finance", " World news", " quick brown fox jumps"]


def instances(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def mc_requests(contexts=CONTEXTS, continuations=SINGLE_TOKEN + MULTI_TOKEN):
    """Every context with every continuation, interleaved so that groups are not contiguous."""
    return instances([(c, x) for x in continuations for c in contexts])


def model_pair(path, verify_packing=True, **kwargs):
    common = dict(pretrained=path, device="cpu", max_length=MAX_LENGTH, **kwargs)
    return HFLM(**common), FastHFLM(verify_packing=verify_packing, **common)


def assert_same_scores(expected, got):
    assert len(got) == len(expected)
    for (lp_ref, greedy_ref), (lp, greedy) in zip(expected, got, strict=True):
        assert lp == pytest.approx(lp_ref, abs=ATOL)
        assert greedy == greedy_ref


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def tiny_model(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------- packing, without a model


def _visible_inputs(row, mask, index):
    """(tokens, positions) that row position ``index`` attends to under the packed mask."""
    allowed = mask[index]
    return (
        [t for t, ok in zip(row.tokens, allowed) if ok],
        [p for p, ok in zip(row.positions, allowed) if ok],
    )


token_lists = st.lists(st.integers(1, 50), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(
    contexts=st.lists(token_lists, min_size=1, max_size=4),
    continuations=st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=6), min_size=1, max_size=5),
    max_length=st.integers(6, 40),
)
def test_every_scored_token_sees_exactly_hflm_input_window(contexts, continuations, max_length):
    """Slow twin of the packing: HFLM's window (c + x)[-(L+1):][:-1] token by token."""
    requests = [((str(c), str(x)), c, x) for c in contexts for x in continuations]
    rows, request_items = pack_rows(requests, max_length)
    masks = [block_causal_mask(torch.tensor([row.segments]))[0, 0].tolist() for row in rows]
    slots = {item: (row, mask, cont, at) for row, mask in zip(rows, masks) for item, cont, at in row.slots}
    assert all(len(row.tokens) <= max_length for row in rows)
    distinct = {(tuple((c + x)[-(max_length + 1):][: -len(x)]), tuple(x)) for _, c, x in requests}
    assert len(slots) == len(distinct)
    for (_, context, continuation), item in zip(requests, request_items, strict=True):
        row, mask, cont, at = slots[item]
        assert cont == continuation
        window = (context + continuation)[-(max_length + 1):][:-1]
        for j, index in enumerate(at):
            tokens, positions = _visible_inputs(row, mask, index)
            expected = window[: len(window) - len(continuation) + j + 1]
            assert tokens == expected
            assert positions == list(range(len(expected)))


def test_identical_requests_are_scored_once():
    requests = [(("a", "b"), [1, 2], [3, 4])] * 3 + [(("a", "c"), [1, 2], [5])]
    rows, request_items = pack_rows(requests, MAX_LENGTH)
    assert len(rows) == 1
    assert request_items == [0, 0, 0, 1]
    assert rows[0].tokens == [1, 2, 3]


# ---------------------------------------------------------------- against HFLM on tiny models


@pytest.mark.parametrize("batch_size", [1, 5])
def test_loglikelihoods_equal_hflm(tiny_model, batch_size):
    ref, fast = model_pair(tiny_model, batch_size=batch_size)
    requests = mc_requests()
    assert_same_scores(ref.loglikelihood(requests, disable_tqdm=True), fast.loglikelihood(requests, disable_tqdm=True))
    assert fast._packing_ok is True


@pytest.mark.parametrize("continuations", [SINGLE_TOKEN, MULTI_TOKEN], ids=["single", "multi"])
def test_contexts_near_and_past_max_length_truncate_like_hflm(tiny_llama, continuations):
    ref, fast = model_pair(tiny_llama, batch_size=3)
    tokens = ref.tok_encode(CONTEXTS[-1])
    assert len(tokens) > MAX_LENGTH
    contexts = [ref.tok_decode(tokens[:n]) for n in (MAX_LENGTH - 3, MAX_LENGTH - 1, MAX_LENGTH, MAX_LENGTH + 2)]
    requests = mc_requests(contexts, continuations)
    assert_same_scores(ref.loglikelihood(requests, disable_tqdm=True), fast.loglikelihood(requests, disable_tqdm=True))


def test_empty_context_uses_prefix_token_like_hflm(tiny_gpt2):
    ref, fast = model_pair(tiny_gpt2, batch_size=2)
    requests = instances([("", " World"), ("", " Sci/Tech"), ("", "Sports news")])
    assert_same_scores(ref.loglikelihood(requests, disable_tqdm=True), fast.loglikelihood(requests, disable_tqdm=True))


def test_rolling_and_generation_are_hflm_unchanged(tiny_llama):
    ref, fast = model_pair(tiny_llama, batch_size=2)
    texts = [Instance("loglikelihood_rolling", {}, (c,), i) for i, c in enumerate(CONTEXTS)]
    assert fast.loglikelihood_rolling(texts, disable_tqdm=True) == pytest.approx(
        ref.loglikelihood_rolling(texts, disable_tqdm=True), abs=ATOL
    )
    prompts = [Instance("generate_until", {}, (c, {"until": ["\n"], "max_gen_toks": 4}), i) for i, c in enumerate(CONTEXTS[:2])]
    assert fast.generate_until(prompts, disable_tqdm=True) == ref.generate_until(prompts, disable_tqdm=True)


def test_disagreeing_packing_falls_back_to_hflm(tiny_llama, monkeypatch):
    """A mask that lets continuations see each other fails the self-check; scores stay HFLM's."""
    plain_causal = packing.block_causal_mask

    def leaky_mask(segments):
        return plain_causal(torch.where(segments > 0, torch.zeros_like(segments), segments))

    monkeypatch.setattr(packing, "block_causal_mask", leaky_mask)
    ref, fast = model_pair(tiny_llama, batch_size=4)
    requests = mc_requests(CONTEXTS[:2], MULTI_TOKEN)
    assert_same_scores(ref.loglikelihood(requests, disable_tqdm=True), fast.loglikelihood(requests, disable_tqdm=True))
    assert fast._packing_ok is False
    assert "disagreed" in fast.packing_unsupported_reason()


def test_unverified_packing_scores_without_hflm(tiny_llama, monkeypatch):
    ref, fast = model_pair(tiny_llama, batch_size=4, verify_packing=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("HFLM's scoring path was used")

    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", forbidden)
    requests = mc_requests(CONTEXTS[:3])
    got = fast.loglikelihood(requests, disable_tqdm=True)
    monkeypatch.undo()
    assert_same_scores(ref.loglikelihood(requests, disable_tqdm=True), got)


def test_bad_verify_packing_is_a_named_error(tiny_gpt2):
    with pytest.raises(ConfigError, match="verify_packing"):
        FastHFLM(pretrained=tiny_gpt2, device="cpu", verify_packing="sometimes")


# ---------------------------------------------------------------- inside lm-eval


def test_register_models_is_idempotent_and_keeps_builtins():
    from lm_eval.api.registry import get_model

    from lm_eval_approx.harness.registration import register_models

    first, second = register_models(), register_models()
    assert first == second == ["approx_hf", "approx"]
    assert get_model("approx_hf") is FastHFLM
    assert register_models() == first  # still idempotent once the lazy target is imported
    assert get_model("hf") is HFLM


def test_model_type_taken_by_another_plugin_is_a_named_error():
    from lm_eval.api.registry import model_registry

    from lm_eval_approx.harness import registration as lm_eval_bridge

    alias = "approx_hf_test_conflict"
    model_registry.register(alias, target="some_plugin.models:OtherLM")
    try:
        with pytest.raises(lm_eval_bridge.ModelRegistrationError, match="some_plugin"):
            lm_eval_bridge._register(alias, lm_eval_bridge.FAST_HF_TARGET)
    finally:
        model_registry._objs.pop(alias)


def write_tiny_task(folder):
    docs = [
        {"text": "The team won the final match of the season.", "label": 1},
        {"text": "Stocks fell as the central bank raised interest rates.", "label": 2},
        {"text": "Leaders met in Geneva to discuss the peace treaty.", "label": 0},
        {"text": "A new chip doubles the speed of scientific computing.", "label": 3},
        {"text": "The quick brown fox jumps over the lazy dog.", "label": 0},
        {"text": "Stocks rose after the final match.", "label": 2},
    ]
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Article: {{text}}\\nTopic:"\n'
        'doc_to_choice: ["World news", "Sports", "Business and finance", "Sci/Tech"]\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )


def test_simple_evaluate_registered_approx_hf_gives_hflm_acc(tiny_llama, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_approx.harness.registration import register_models

    register_models()
    write_tiny_task(tmp_path)
    results = {}
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False)
    for model in ("hf", "approx_hf"):
        out = lm_eval.simple_evaluate(
            model=model, model_args=f"pretrained={tiny_llama},device=cpu", tasks=["tiny_mc"],
            task_manager=tasks, batch_size=4, log_samples=True,
        )
        scores = [r for s in out["samples"]["tiny_mc"] for r in s["filtered_resps"]]
        results[model] = (out["results"]["tiny_mc"], scores)
    (ref_metrics, ref_scores), (fast_metrics, fast_scores) = results["hf"], results["approx_hf"]
    assert fast_metrics["acc,none"] == ref_metrics["acc,none"]
    assert fast_metrics["acc_norm,none"] == ref_metrics["acc_norm,none"]
    assert_same_scores([(float(a), bool(b)) for a, b in ref_scores], [(float(a), bool(b)) for a, b in fast_scores])


# ---------------------------------------------------------------- real weights


@pytest.mark.slow
def test_smollm2_agnews_documents_equal_hflm(mirror):
    from lm_eval_approx.models.loading import resolve_model
    from _specs import AGNEWS

    with open(mirror / "ag_news" / "test.jsonl") as handle:
        docs = [json.loads(line) for _, line in zip(range(SLOW_DOCS), handle)]
    pairs = [(AGNEWS.context(d["text"]), x) for d in docs for x in AGNEWS.continuations()]
    requests = instances(pairs)
    ref = HFLM(pretrained=resolve_model("smollm2-135m"), device="cpu", batch_size=16, dtype="float32")
    fast = FastHFLM(pretrained=ref.model, tokenizer=ref.tokenizer, device="cpu", batch_size=16)
    expected, got = ref.loglikelihood(requests, disable_tqdm=True), fast.loglikelihood(requests, disable_tqdm=True)
    assert_same_scores(expected, got)
    choices = len(AGNEWS.choices)

    def accuracy(scores):
        picks = [max(range(choices), key=lambda k: scores[i * choices + k][0]) for i in range(len(docs))]
        return sum(p == d["label"] for p, d in zip(picks, docs)) / len(docs)

    assert accuracy(got) == accuracy(expected)
