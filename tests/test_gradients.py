"""Per-example gradient factors against one plain backward per example (float32, no padding)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from lm_eval_approx.errors import UnknownNameError
from lm_eval_approx.models.layers import (
    changed_modules,
    head_name,
    linear_modules,
    oriented_weight,
    resolve_modules,
    weight_delta,
)
from lm_eval_approx.features.gradients import (
    head_factors,
    layer_factors,
    loss_and_delta,
    merge_windows,
    row_gram,
    total_sqnorm,
)
from lm_eval_approx.features.losses import batch_losses
from lm_eval_approx.models.head_positions import supports_head_positions
from lm_eval_approx.features.encoding import Batch, collate, encode_examples, flatten
from _specs import AGNEWS, MSMARCO

TEXTS = ["The team won the final match.", "Stocks fell as the central bank raised rates again today.",
         "Leaders met", "A new chip doubles the speed of scientific computing in labs."]
LABELS = [1, 2, 0, 3]
ATOL = 1e-5


def _untied(model: nn.Module) -> nn.Module:
    """A copy whose head weight is its own parameter, so its .grad is the head's use only."""
    twin = copy.deepcopy(model)
    head = twin.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone())
    return twin


def _oracle(model, encoded, names):
    """Loss and per-layer gradient (out×in) of each example alone: the obvious definition."""
    twin = _untied(model).requires_grad_(True)
    modules = linear_modules(twin)
    results = []
    for enc in encoded:
        twin.zero_grad()
        ids = torch.tensor([enc.ids])
        logp = torch.log_softmax(twin(input_ids=ids).logits[0].float(), dim=-1)
        nll = torch.stack([-logp[t - 1, enc.ids[t]] for t in range(enc.start, len(enc.ids))])
        loss = nll.sum() * enc.weight
        loss.backward()
        grads = {}
        for name in names:
            weight = modules[name].weight
            grads[name] = weight.grad.t() if isinstance(modules[name], Conv1D) else weight.grad
        results.append((loss.item(), {n: g.clone() for n, g in grads.items()}))
    return results


def _setup(kind, spec, tokenizer):
    model = build_tiny_model(kind, len(tokenizer), seed=3)
    labels = LABELS if spec is AGNEWS else None
    encoded, counts = flatten(encode_examples(tokenizer, spec, TEXTS, labels, max_length=48))
    assert counts == [1] * len(TEXTS), "48 tokens hold every text in one window"
    return model, encoded, collate(encoded, tokenizer.pad_token_id)


@pytest.mark.parametrize("full_logits", [False, True], ids=["head-at-positions", "full-logits"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("spec", [AGNEWS, MSMARCO], ids=["classification", "lm"])
def test_head_factors_equal_per_example_backward(kind, spec, full_logits, tiny_tokenizer):
    model, encoded, batch = _setup(kind, spec, tiny_tokenizer)
    assert len({len(e.ids) for e in encoded}) > 1, "the batch must contain padding"
    head = head_name(model)
    loss, factors = head_factors(model, batch, head, full_logits=full_logits)
    grads = factors[head].gradient()
    for i, (want_loss, want) in enumerate(_oracle(model, encoded, [head])):
        assert loss[i].item() == pytest.approx(want_loss, rel=1e-5)
        torch.testing.assert_close(grads[i], want[head], atol=ATOL, rtol=1e-4)
        assert factors[head].sqnorm()[i].item() == pytest.approx(want[head].pow(2).sum().item(), rel=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("spec", [AGNEWS, MSMARCO], ids=["classification", "lm"])
def test_the_head_runs_only_at_loss_positions_where_the_model_allows(kind, spec, tiny_tokenizer):
    """Both tiny architectures take ``logits_to_keep`` positions, so the head sees R rows per
    example instead of T, and the factors equal the full-logits twin's."""
    model, _, batch = _setup(kind, spec, tiny_tokenizer)
    head = head_name(model)
    assert supports_head_positions(model)
    seen: list[tuple[int, ...]] = []
    handle = resolve_modules(model, [head])[head].register_forward_hook(
        lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    try:
        loss, fast = head_factors(model, batch, head)
    finally:
        handle.remove()
    assert seen[0][:2] == tuple(batch.positions.shape)
    want_loss, slow = head_factors(model, batch, head, full_logits=True)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[head].delta, slow[head].delta, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[head].x, slow[head].x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("spec", [AGNEWS, MSMARCO], ids=["classification", "lm"])
def test_layer_factors_equal_per_example_backward(kind, spec, tiny_tokenizer):
    model, encoded, batch = _setup(kind, spec, tiny_tokenizer)
    names = list(linear_modules(model))
    loss, factors = layer_factors(model, batch, names)
    assert all(p.requires_grad for p in model.parameters()), "weights must be unfrozen afterwards"
    total = total_sqnorm(factors)
    for i, (want_loss, want) in enumerate(_oracle(model, encoded, names)):
        assert loss[i].item() == pytest.approx(want_loss, rel=1e-5)
        assert total[i].item() == pytest.approx(sum(g.pow(2).sum().item() for g in want.values()), rel=1e-4)
        for name in names:
            torch.testing.assert_close(factors[name].gradient()[i], want[name], atol=ATOL, rtol=1e-4)
            assert factors[name].sqnorm()[i].item() == pytest.approx(want[name].pow(2).sum().item(),
                                                                      rel=1e-3, abs=1e-9)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("spec", [AGNEWS, MSMARCO], ids=["classification", "lm"])
def test_layer_factors_fast_path_equals_full_logits(kind, spec, tiny_tokenizer):
    """The backward from δ at the loss positions, the head run there only, against the full-logits twin;
    the head, among the layers, has one factor row per loss position instead of one per token."""
    model, _, batch = _setup(kind, spec, tiny_tokenizer)
    names = list(linear_modules(model))
    head = head_name(model)
    loss, fast = layer_factors(model, batch, names)
    want_loss, slow = layer_factors(model, batch, names, full_logits=True)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert fast[head].delta.shape[1] == batch.positions.shape[1] < slow[head].delta.shape[1]
    for name in names:
        torch.testing.assert_close(fast[name].gradient(), slow[name].gradient(), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(total_sqnorm(fast), total_sqnorm(slow), rtol=1e-4, atol=0)


def test_loss_and_delta_is_the_loss_and_its_gradient_in_one_pass():
    """The loss is ``batch_losses`` bit for bit and δ = w (softmax − onehot) its gradient, zero at unused
    slots; built in the logits' own memory it is the same."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 50, generator=gen) * 4
    targets = torch.randint(0, 50, (3, 4), generator=gen)
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.25] * 4])
    batch = Batch(torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long),
                  torch.zeros(3, 4, dtype=torch.long), targets, weights)
    loss, delta = loss_and_delta(z, batch)
    assert torch.equal(loss, batch_losses(z, batch))
    leaf = z.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(batch_losses(leaf, batch).sum(), leaf)
    torch.testing.assert_close(delta, want, rtol=1e-5, atol=1e-7)
    assert not delta[weights == 0].any()
    own = z.clone()
    same_loss, same_delta = loss_and_delta(own, batch, overwrite=True)
    assert same_delta.data_ptr() == own.data_ptr()
    assert torch.equal(same_loss, loss) and torch.equal(same_delta, delta)


@pytest.mark.parametrize("width", [40, 600])
@pytest.mark.parametrize("batch", [2, 5])
@pytest.mark.parametrize("rows", [1, 5, 47, 63, 64, 100, 127])
def test_row_gram_is_the_per_example_gram(rows, batch, width):
    """Row counts just short of a multiple of 16 take the aligned products (reading neighbouring rows);
    wide rows, the blocks on and below the diagonal, mirrored."""
    gen = torch.Generator().manual_seed(rows)
    t = torch.randn(batch, rows, width, generator=gen)
    torch.testing.assert_close(row_gram(t), t @ t.transpose(1, 2), rtol=1e-6, atol=1e-5)
    inner = torch.randn(batch + 2, rows, width, generator=gen)[1:-1]
    torch.testing.assert_close(row_gram(inner), inner @ inner.transpose(1, 2), rtol=1e-6, atol=1e-5)
    strided = torch.randn(rows, batch, width, generator=gen).transpose(0, 1)
    torch.testing.assert_close(row_gram(strided), strided @ strided.transpose(1, 2), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_rolling_windows_merge_into_the_documents_gradient(kind, tiny_tokenizer):
    """A long passage in several rolling windows: the merged factors are one example whose loss,
    gradient and exact ‖G‖² are those of the whole document (the sum over its windows, each by a
    plain backward), for the head path and the backward path alike."""
    model = build_tiny_model(kind, len(tiny_tokenizer), seed=3)
    documents = encode_examples(tiny_tokenizer, MSMARCO, TEXTS, None, max_length=8)
    encoded, counts = flatten(documents)
    assert max(counts) > 2 and min(counts) >= 1 and len(set(counts)) > 1
    batch = collate(encoded, tiny_tokenizer.pad_token_id)
    names = list(linear_modules(model))
    oracle = _oracle(model, encoded, names)
    starts = [sum(counts[:i]) for i in range(len(counts))]
    want = [(sum(oracle[j][0] for j in range(a, a + c)), {n: sum(oracle[j][1][n] for j in range(a, a + c))
                                                          for n in names}) for a, c in zip(starts, counts)]
    head = head_name(model)
    for loss, factors, checked in (merge_windows(*head_factors(model, batch, head), counts) + ([head],),
                                   merge_windows(*layer_factors(model, batch, names), counts) + (names,)):
        total = total_sqnorm(factors)
        for i, (want_loss, grads) in enumerate(want):
            assert loss[i].item() == pytest.approx(want_loss, rel=1e-5)
            for name in checked:
                torch.testing.assert_close(factors[name].gradient()[i], grads[name], atol=ATOL, rtol=1e-4)
            assert total[i].item() == pytest.approx(sum(grads[n].pow(2).sum().item() for n in checked), rel=1e-4)


def test_head_via_backward_equals_head_via_forward(tiny_tokenizer):
    model, _, batch = _setup("llama", AGNEWS, tiny_tokenizer)
    head = head_name(model)
    _, fast = head_factors(model, batch, head)
    _, slow = layer_factors(model, batch, [head])
    torch.testing.assert_close(fast[head].gradient(), slow[head].gradient(), atol=ATOL, rtol=1e-4)


def _lora(model, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], lora_dropout=0.0,
                        fan_in_fan_out=True, init_lora_weights=False)
    return get_peft_model(copy.deepcopy(model), config).eval()


def test_lora_layers_changed_delta_and_gradient(tiny_tokenizer):
    base, encoded, batch = _setup("gpt2", AGNEWS, tiny_tokenizer)
    tuned = _lora(base)
    names = changed_modules(base, tuned)
    assert names == [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "mlp.c_fc")]
    merged = copy.deepcopy(tuned).merge_and_unload()
    mods0, mods_f, mods_m = linear_modules(base), linear_modules(tuned), linear_modules(merged)
    for name in names:
        delta = weight_delta(mods0[name], mods_f[name])
        assert all(right is not None for _, right in delta.terms), "a LoRA delta stays factored"
        want = oriented_weight(mods0[name]) - oriented_weight(mods_m[name])
        torch.testing.assert_close(delta.materialise(), want, atol=1e-6, rtol=1e-5)
    _, factors = layer_factors(tuned, batch, names)
    for i, (_, want) in enumerate(_oracle(merged, encoded, names)):
        for name in names:
            torch.testing.assert_close(factors[name].gradient()[i], want[name], atol=ATOL, rtol=1e-4)


def test_changed_modules_finds_exactly_the_modified_layers(tiny_tokenizer):
    base = build_tiny_model("llama", len(tiny_tokenizer), seed=0)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0
        tuned.model.layers[0].self_attn.q_proj.weight.mul_(2.0)
    assert changed_modules(base, tuned) == ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    assert changed_modules(base, copy.deepcopy(base)) == []
    # Tied embeddings: a changed embedding is a changed head.
    with torch.no_grad():
        tuned.get_input_embeddings().weight[5] += 1.0
    assert "lm_head" in changed_modules(base, tuned)


def test_unknown_layer_name_lists_known(tiny_tokenizer):
    model, _, batch = _setup("gpt2", AGNEWS, tiny_tokenizer)
    with pytest.raises(UnknownNameError, match="lm_head"):
        layer_factors(model, batch, ["transformer.h.9.attn"])
