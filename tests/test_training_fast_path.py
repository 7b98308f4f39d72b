"""The head-at-label-positions loss (train_loss) against its slow twin, full-vocabulary logits at
every position: same per-example losses, same gradients, same trained adapter; training_batch pads
to the batch's longest row."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lm_eval_approx.models.loading import load_model, load_tokenizer
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.data.selection_file import SelectedExample
from _specs import AGNEWS, MSMARCO
from lm_eval_approx.models.head_positions import HeadPositionsError, supports_head_positions
from lm_eval_approx.training.loss import (
    batch_example_losses,
    full_example_losses,
    head_example_losses,
    head_position_mask,
)
from lm_eval_approx.training.loop import save_training, train_model
from lm_eval_approx.training.model import prepare_model
from lm_eval_approx.training.rendering import IGNORE_INDEX, normalise_weights, render_examples, training_batch

RTOL = 1e-5
NO_DROPOUT = dict(batch_size=4, learning_rate=3e-3, validation_fraction=0.25, lora_dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def varied_examples(n: int = 6) -> list[SelectedExample]:
    """Rows of different lengths (so the batch is padded), every label (multi-token ones too), weights."""
    return [SelectedExample(id=str(i), text="The team match report" + " and more" * (3 * i), label=i % 4,
                            weight=1.0 + i % 3, order=i) for i in range(n)]


def _batch(tokenizer, spec, examples, max_length: int = 64):
    return training_batch(normalise_weights(render_examples(tokenizer, spec, examples, max_length)),
                          tokenizer.pad_token_id)


def _loss_and_grads(model, batch, kind, head_positions: bool, seed: int = 0):
    model.zero_grad()
    torch.manual_seed(seed)  # same dropout draws inside the body for both paths
    losses = batch_example_losses(model, batch, kind, head_positions)
    (losses * batch["weight"]).mean().backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_close(a: torch.Tensor, b: torch.Tensor, name: str = "") -> None:
    torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL * float(b.abs().max().clamp(min=1e-12)), msg=name)


@pytest.mark.parametrize("base_name", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_head_positions_give_the_losses_and_gradients_of_full_logits(request, base_name, method):
    base = request.getfixturevalue(base_name)
    model, tokenizer = prepare_model(base, TrainingRecipe(method=method, **NO_DROPOUT))
    assert supports_head_positions(model)
    with torch.no_grad():  # LoRA B starts at zero, which would make every A gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    batch = _batch(tokenizer, AGNEWS, varied_examples())
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    n_targets = (batch["labels"] != IGNORE_INDEX).sum(dim=1)
    assert n_targets.max() > 1 and len(set(batch["weight"].tolist())) > 1
    fast_losses, fast_grads = _loss_and_grads(model, batch, AGNEWS.kind, head_positions=True)
    slow_losses, slow_grads = _loss_and_grads(model, batch, AGNEWS.kind, head_positions=False)
    _assert_close(fast_losses, slow_losses)
    assert fast_grads.keys() == slow_grads.keys() and fast_grads
    for name in slow_grads:
        assert slow_grads[name].abs().max() > 0, name
        _assert_close(fast_grads[name], slow_grads[name], name)


def test_the_head_sees_only_label_predicting_positions(tiny_llama):
    model, tokenizer = prepare_model(tiny_llama, TrainingRecipe(**NO_DROPOUT))
    batch = _batch(tokenizer, AGNEWS, varied_examples(3))
    keep = head_position_mask(batch["labels"])
    assert keep.sum() == (batch["labels"] != IGNORE_INDEX).sum()
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        head_example_losses(model.eval(), batch)
    hook.remove()
    assert seen == [torch.Size([int(keep.sum()), model.config.hidden_size])]


def test_language_modelling_keeps_the_full_path(tiny_gpt2):
    model, tokenizer = load_model(tiny_gpt2), load_tokenizer(tiny_gpt2)
    examples = [SelectedExample(id=str(i), text="the quick brown fox" + " jumps" * i) for i in range(4)]
    batch = _batch(tokenizer, MSMARCO, examples)
    with torch.no_grad():
        fast = batch_example_losses(model, batch, MSMARCO.kind, head_positions=True)
        slow = full_example_losses(model, batch, MSMARCO.kind)
    assert torch.equal(fast, slow)


def test_training_batch_pads_to_the_longest_row(tiny_tokenizer):
    batch = _batch(tiny_tokenizer, AGNEWS, varied_examples(3), max_length=512)
    lengths = batch["attention_mask"].sum(dim=1)
    assert batch["input_ids"].shape[1] == int(lengths.max()) < 512 and lengths.min() < lengths.max()


class _NoKeepModel(torch.nn.Module):
    def forward(self, input_ids=None, attention_mask=None):
        raise AssertionError("not called")


class _IgnoresKeepModel(torch.nn.Module):
    """Accepts logits_to_keep but returns logits at every position."""

    def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 7)})()


def test_models_without_a_boolean_logits_to_keep_are_detected(tiny_tokenizer):
    assert not supports_head_positions(_NoKeepModel())
    assert not supports_head_positions(_IgnoresKeepModel())  # its module lacks transformers' slicing helper
    batch = _batch(tiny_tokenizer, AGNEWS, varied_examples(2))
    with pytest.raises(HeadPositionsError, match="logits_to_keep"):
        head_example_losses(_IgnoresKeepModel(), batch)


@pytest.mark.parametrize("base_name", ["tiny_llama", "tiny_gpt2"])
def test_two_epochs_train_the_same_adapter_via_both_paths(request, tmp_path, base_name):
    base = request.getfixturevalue(base_name)
    examples = varied_examples(12)
    # One pass per batch: micro-batches sum each gradient in another order, and 12 Adam steps blow
    # that rounding up to ~4e-4 relative on lora_B (seen on an AVX-512 machine); that micro-batches
    # give the batch's gradient is the one-step test in test_training.py.
    recipe = TrainingRecipe(epochs=2, patience=0, micro_batch_size=0, **NO_DROPOUT)
    runs = {}
    for full_logits in (False, True):
        result = train_model(base, AGNEWS, examples, recipe, tmp_path / f"work{full_logits}", progress=False,
                             full_logits=full_logits)
        out = save_training(result, base, AGNEWS, examples, recipe, tmp_path / f"adapter{full_logits}")
        runs[full_logits] = (load_file(str(out / "adapter_model.safetensors")), result.history)
    (fast, fast_history), (slow, slow_history) = runs[False], runs[True]
    assert fast.keys() == slow.keys() and any("lm_head" in name for name in fast)
    for name in slow:
        assert slow[name].abs().max() > 0, name
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-6, msg=name)
    assert fast_history.train_loss == pytest.approx(slow_history.train_loss, rel=1e-5)
    assert fast_history.validation_loss == pytest.approx(slow_history.validation_loss, rel=1e-5)


# On SmolLM2 (V = 49,152) the full path's float32 NLL, reduced over the strided vocabulary axis of
# (B, V, T) logits, is off by up to ~3e-5 relative to float64, the head path by ~1e-6: the twins
# agree to SMOLLM2_RTOL (losses; gradients relative to their largest entry), the head path closer.
SMOLLM2_RTOL = 1e-4
SMOLLM2_GRAD_RTOL = 2e-3


@pytest.mark.slow
def test_smollm2_head_positions_match_full_logits():
    model, tokenizer = prepare_model("smollm2-135m", TrainingRecipe(max_length=32, **NO_DROPOUT))
    assert supports_head_positions(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and "lm_head" in name:
                p.normal_(std=0.01, generator=torch.Generator().manual_seed(0))
    batch = _batch(tokenizer, AGNEWS, varied_examples(4), max_length=32)
    fast_losses, fast_grads = _loss_and_grads(model, batch, AGNEWS.kind, head_positions=True)
    slow_losses, slow_grads = _loss_and_grads(model, batch, AGNEWS.kind, head_positions=False)
    torch.testing.assert_close(fast_losses, slow_losses, rtol=SMOLLM2_RTOL, atol=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    keep = head_position_mask(batch["labels"])
    nll = torch.nn.functional.cross_entropy(logits[keep], batch["labels"][:, 1:][keep[:, :-1]], reduction="none")
    exact = torch.zeros(len(fast_losses), dtype=torch.float64).index_add(0, keep.nonzero()[:, 0], nll)
    assert (fast_losses.double() - exact).abs().max() <= (slow_losses.double() - exact).abs().max()
    for name in [n for n in slow_grads if "lm_head" in n or "layers.29." in n]:
        scale = float(slow_grads[name].abs().max())
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=SMOLLM2_GRAD_RTOL,
                                   atol=SMOLLM2_GRAD_RTOL * scale, msg=name)
