"""training/prefix_cache.py: training through the top blocks on cached frozen-prefix states gives
the gradients and losses of the full forward (the slow, obviously-correct twin), and a model the
cache cannot reproduce is refused by name.

Tolerance: fp32, no dropout below the adapted blocks. A row's cached states are computed in another
batch (other width, other rows) than the one it trains in, so the two paths differ by float rounding
only: gradients agree to rtol 1e-4 / atol 1e-7 and losses to 1e-5 relative (measured differences
are about 1e-7 relative).
"""

from __future__ import annotations

import pytest
import torch

from _specs import AGNEWS, MSMARCO
from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.training.epoch import backward_in_parts
from lm_eval_approx.training.model import block_index, prepare_model
from lm_eval_approx.training.prefix_cache import (
    PREFIX_STATES,
    FrozenPrefix,
    PrefixCacheError,
    decoder_blocks,
    prefixed_batch,
)
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.rendering import normalise_weights, render_examples, training_batch
from test_training import toy_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRAD_RTOL, GRAD_ATOL, LOSS_RTOL = 1e-4, 1e-7, 1e-5
EXACT = dict(mixed_precision="no", lora_dropout=0.0, learning_rate=3e-3, batch_size=8, validation_fraction=0.25)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory) -> str:
    """A tiny random Llama with three blocks (zero attention dropout, Llama's default)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    path = tmp_path_factory.mktemp("llama3")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def _examples(spec, n: int = 8) -> list[SelectedExample]:
    examples = toy_examples(n, weights=True)
    if spec is MSMARCO:  # passages of several lengths: padding inside the batch
        examples = [SelectedExample(id=e.id, text=e.text + " more words" * (i % 4), weight=e.weight)
                    for i, e in enumerate(examples)]
    return examples


def _step_gradients(base: str, spec, lora_layers: int, cached: bool, lora_dropout: float = 0.0):
    """One step's LoRA gradients (and loss) on a batch of 8, through the cache or the full model; the
    adapters' B matrices are set non-zero first, so every A gets a gradient too."""
    from accelerate import Accelerator

    recipe = TrainingRecipe(**{**EXACT, "lora_dropout": lora_dropout}, lora_layers=lora_layers)
    model, tokenizer = prepare_model(base, recipe)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    rows = normalise_weights(render_examples(tokenizer, spec, _examples(spec), 64))
    batch, prefix = training_batch(rows, tokenizer.pad_token_id), None
    if cached:
        prefix = FrozenPrefix.of(model, lora_layers)
        states = prefix.states(model, rows, 3, tokenizer.pad_token_id)  # computed in batches of 3, trained in 8
        batch = prefixed_batch(list(zip(rows, states)), tokenizer.pad_token_id)
    torch.manual_seed(2)  # the same LoRA dropout masks in both paths: nothing below draws random numbers
    loss = backward_in_parts(Accelerator(), model, batch, spec.kind, True, 0, prefix=prefix)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, model


@pytest.mark.parametrize("lora_layers", [1, 2])
@pytest.mark.parametrize("spec", [AGNEWS, MSMARCO], ids=["classification", "lm"])
def test_one_step_gradients_through_the_cache_equal_the_full_forward(llama3, spec, lora_layers):
    full_loss, full, _ = _step_gradients(llama3, spec, lora_layers, cached=False)
    loss, grads, model = _step_gradients(llama3, spec, lora_layers, cached=True)
    assert loss == pytest.approx(full_loss, rel=LOSS_RTOL)
    assert full.keys() == grads.keys()
    assert all("lm_head" in n or block_index(n) >= 3 - lora_layers for n in full)  # only the top blocks adapt
    for name, grad in full.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)
    blocks = decoder_blocks(model)
    assert all("forward" not in block.__dict__ for block in blocks)  # the bypass is undone after the step


def test_the_frozen_blocks_do_not_run_and_adapter_dropout_draws_the_same_masks(llama3):
    """Only the top blocks compute while the cache feeds them; with LoRA dropout on, the masks
    (drawn in the top blocks only) are the full path's, so the gradients still agree."""
    calls = []
    model = _step_gradients(llama3, AGNEWS, 1, cached=False)[2]
    for index, block in enumerate(decoder_blocks(model)):
        block.self_attn.register_forward_hook(lambda *_, index=index: calls.append(index))
    model(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls == [0, 1, 2]
    prefix = FrozenPrefix.of(model, 1)
    calls.clear()
    with prefix.feeding(torch.zeros(1, 3, 32)):
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls == [2]
    full_loss, full, _ = _step_gradients(llama3, AGNEWS, 1, cached=False, lora_dropout=0.3)
    loss, grads, _ = _step_gradients(llama3, AGNEWS, 1, cached=True, lora_dropout=0.3)
    assert loss == pytest.approx(full_loss, rel=LOSS_RTOL)
    for name, grad in full.items():
        torch.testing.assert_close(grads[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)


@pytest.mark.parametrize("kind", ["qwen2", "mistral", "gemma2", "phi3", "gpt_neox"])
def test_other_llama_like_families_get_the_same_gradients(tmp_path, kind):
    from conftest import save_tiny_model

    base = save_tiny_model(tmp_path / kind, kind)
    full_loss, full, _ = _step_gradients(base, AGNEWS, 1, cached=False)
    loss, grads, _ = _step_gradients(base, AGNEWS, 1, cached=True)
    assert loss == pytest.approx(full_loss, rel=LOSS_RTOL)
    for name, grad in full.items():
        torch.testing.assert_close(grads[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=f"{kind}: {name}")


@pytest.mark.parametrize("lora_dropout", [0.0, 0.1])
def test_a_short_training_through_the_cache_gives_the_same_losses_and_adapter(llama3, tmp_path, lora_dropout):
    from lm_eval_approx.training.loop import train_model

    examples = _examples(AGNEWS, 24)
    runs = {}
    for cached in (False, True):
        recipe = TrainingRecipe(**{**EXACT, "lora_dropout": lora_dropout}, epochs=2, lora_layers=1,
                                batch_order="bucketed", micro_batch_size=3, prefix_cache=cached)
        runs[cached] = train_model(llama3, AGNEWS, examples, recipe, tmp_path / f"w{cached}{lora_dropout}",
                                   progress=False)
    full, cached = runs[False].history, runs[True].history
    assert cached.train_loss == pytest.approx(full.train_loss, rel=LOSS_RTOL)
    assert cached.validation_loss == pytest.approx(full.validation_loss, rel=LOSS_RTOL)
    assert cached.initial_validation_loss == pytest.approx(full.initial_validation_loss, rel=LOSS_RTOL)
    assert [s["loss"] for s in cached.steps] == pytest.approx([s["loss"] for s in full.steps], rel=LOSS_RTOL)
    assert cached.best_epoch == full.best_epoch and cached.tokens == full.tokens
    trained = {n: p for n, p in runs[True].model.named_parameters() if "lora_" in n}
    reference = dict(runs[False].model.named_parameters())
    for name, value in trained.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_batches_carry_zero_padded_states():
    rows = [type("Row", (), {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "weight": 1.0})(),
            type("Row", (), {"input_ids": [4], "labels": [4], "weight": 1.0})()]
    states = [torch.ones(3, 2), torch.full((1, 2), 2.0)]
    batch = prefixed_batch(list(zip(rows, states)), pad_id=0)
    assert batch[PREFIX_STATES].tolist() == [[[1, 1], [1, 1], [1, 1]], [[2, 2], [0, 0], [0, 0]]]


def test_the_cache_is_a_recipe_field_that_keeps_existing_hashes():
    assert TrainingRecipe(lora_layers=2).recipe_hash() == TrainingRecipe(lora_layers=2, prefix_cache=False).recipe_hash()
    assert TrainingRecipe(lora_layers=2, prefix_cache=True).recipe_hash() != TrainingRecipe(lora_layers=2).recipe_hash()
    assert TrainingRecipe.from_options({"lora_layers": "2", "prefix_cache": "true"}).prefix_cache is True
    assert TrainingRecipe.from_json(TrainingRecipe(lora_layers=2).to_json()).prefix_cache is False
    with pytest.raises(ConfigError, match="prefix_cache.*lora_layers > 0"):
        TrainingRecipe(prefix_cache=True)
    with pytest.raises(ConfigError, match="prefix_cache"):
        TrainingRecipe(lora_layers=1, prefix_cache="yes")


def test_models_the_cache_cannot_reproduce_are_refused_by_name(tiny_gpt2, llama3, tmp_path):
    from conftest import save_tiny_model

    gpt2, _ = prepare_model(tiny_gpt2, TrainingRecipe(lora_layers=1))
    with pytest.raises(PrefixCacheError, match=r"dropout below block 1 \(attn_pdrop=0.1, embd_pdrop=0.1"):
        FrozenPrefix.of(gpt2, 1)
    llama, _ = prepare_model(llama3, TrainingRecipe(lora_layers=3))
    with pytest.raises(PrefixCacheError, match="every one of the 3 blocks"):
        FrozenPrefix.of(llama, 3)
    recipe = TrainingRecipe(lora_layers=1, mixed_precision="no")
    falcon, tokenizer = prepare_model(save_tiny_model(tmp_path / "falcon", "falcon"), recipe)
    rows = render_examples(tokenizer, AGNEWS, toy_examples(2), 64)
    with pytest.raises(PrefixCacheError, match="returns a tuple"):
        FrozenPrefix.of(falcon, 1).states(falcon, rows, 2, tokenizer.pad_token_id)
