"""Training on tiny random models: losses fall, lm-eval reloads the adapter with the same scores,
tied input embeddings stay untouched, interrupted runs resume to the same weights, early stopping
keeps the best epoch, and the batched weighted loss agrees with a per-example loop."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lm_eval_approx.training import loop as training
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.loading import load_model
from lm_eval_approx.training.history import TrainingHistory
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.data.selection_file import SelectedExample, write_selection
from _specs import AGNEWS, MSMARCO
from lm_eval_approx.training.loss import example_losses_from_logits
from lm_eval_approx.training.loop import (
    CHECKPOINT_FILE,
    TRAINING_FILE,
    save_training,
    train_adapter,
    train_model,
    work_dir_for,
)
from lm_eval_approx.training.rendering import (
    IGNORE_INDEX,
    TrainingDataError,
    normalise_weights,
    render_example,
    render_examples,
    split_validation,
    training_batch,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


KEYWORDS = ("peace treaty leaders", "team match season", "stocks bank rates", "chip computing science")
# fp32: these tests compare trained models with slow twins computed in full precision.
FAST = dict(batch_size=8, learning_rate=3e-3, validation_fraction=0.25, lora_dropout=0.1, mixed_precision="no")


def toy_examples(n: int = 48, weights: bool = False) -> list[SelectedExample]:
    """A learnable toy task: the label is given away by a keyword phrase in the text."""
    return [
        SelectedExample(id=str(i), text=f"The {KEYWORDS[i % 4]} report number {i}", label=i % 4,
                        weight=1.0 + (i % 3) if weights else 1.0, order=i)
        for i in range(n)
    ]


def crash_after_first_epoch(epoch, history):
    """An ``on_epoch_end`` that interrupts a training after its first epoch's checkpoint."""
    if epoch == 1:
        raise KeyboardInterrupt


def _adapter_tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _per_example_loglikelihoods(model, tokenizer, spec, examples) -> list[float]:
    """Slow twin: one unpadded forward per example, log-probabilities of its target tokens summed."""
    out = []
    with torch.no_grad():
        for ex in examples:
            [row] = render_example(tokenizer, spec, ex, max_length=10_000)
            logits = model(input_ids=torch.tensor([row.input_ids])).logits[0].float()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            out.append(sum(logprobs[t - 1, tok].item() for t, tok in enumerate(row.labels) if tok != IGNORE_INDEX))
    return out


@pytest.mark.parametrize("base_name, spec", [("tiny_llama", AGNEWS), ("tiny_gpt2", MSMARCO)])
def test_training_reduces_training_and_validation_loss(request, tmp_path, base_name, spec):
    base = request.getfixturevalue(base_name)
    examples = toy_examples(weights=True)
    if spec is MSMARCO:
        examples = [SelectedExample(id=e.id, text=e.text, weight=e.weight) for e in examples]
    result = train_model(base, spec, examples, TrainingRecipe(epochs=4, **FAST), tmp_path / "work", progress=False)
    history = result.history
    assert history.n_train == 36 and history.n_validation == 12
    assert history.train_loss[-1] < 0.8 * history.train_loss[0]
    assert history.validation_loss[-1] < 0.8 * history.initial_validation_loss
    assert history.best_epoch == 1 + min(range(4), key=history.validation_loss.__getitem__)


@pytest.mark.parametrize(
    "base_name, spec, targets",
    [("tiny_llama", AGNEWS, ("all-linear", "head")), ("tiny_gpt2", MSMARCO, ("all-linear", "head")),
     ("tiny_llama", AGNEWS, ("q_proj", "v_proj"))],
)
def test_adapter_reloads_in_lm_eval_with_identical_loglikelihoods(request, tmp_path, base_name, spec, targets):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_approx.harness import tied_head as peft_compat

    peft_compat.install()  # HFLM's tie_weights() fails on a LoRA-wrapped tied head otherwise
    base = request.getfixturevalue(base_name)
    examples = toy_examples(24)
    recipe = TrainingRecipe(epochs=2, target_modules=targets, **FAST)
    result = train_model(base, spec, examples, recipe, tmp_path / "work", progress=False)
    out = save_training(result, base, spec, examples, recipe, tmp_path / "adapter")
    docs = examples[:6]
    if spec is AGNEWS:
        probes = [SelectedExample(id=d.id, text=d.text, label=c) for d in docs for c in range(spec.num_classes)]
        requests = [Instance("loglikelihood", {}, (spec.context(p.text), spec.continuations()[p.label]), i)
                    for i, p in enumerate(probes)]
    else:
        probes = [SelectedExample(id=d.id, text=d.text) for d in docs]
        requests = [Instance("loglikelihood_rolling", {}, (spec.context(p.text),), i) for i, p in enumerate(probes)]
    ours = _per_example_loglikelihoods(result.model, result.tokenizer, spec, probes)
    lm = HFLM(pretrained=base, peft=str(out), device="cpu", batch_size=4)
    if spec is AGNEWS:
        theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    else:
        theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    assert theirs == pytest.approx(ours, abs=1e-4)
    base_only = _per_example_loglikelihoods(load_model(base), result.tokenizer, spec, probes)
    assert max(abs(a - b) for a, b in zip(ours, base_only)) > 1e-3, "the adapter changed nothing"


@pytest.mark.parametrize("base_name", ["tiny_llama", "tiny_gpt2"])
def test_lora_on_a_tied_head_leaves_input_embeddings_unchanged(request, tmp_path, base_name):
    base = request.getfixturevalue(base_name)
    original = load_model(base)
    before = original.get_input_embeddings().weight.detach().clone()
    assert original.get_output_embeddings().weight is original.get_input_embeddings().weight
    out = train_adapter(base, AGNEWS, toy_examples(24), TrainingRecipe(epochs=2, **FAST), tmp_path / "a", progress=False)
    saved = _adapter_tensors(out)
    head_b = [name for name in saved if "lm_head" in name and "lora_B" in name]
    assert head_b and saved[head_b[0]].abs().max() > 0, "LoRA on the head did not train"
    assert all("lora_" in name for name in saved), "the adapter must not carry embedding weights"
    reloaded = load_model(str(out))
    assert torch.equal(reloaded.get_input_embeddings().weight, before)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(reloaded.get_input_embeddings()(ids), original.get_input_embeddings()(ids))
    with torch.no_grad():
        assert not torch.allclose(reloaded(input_ids=ids).logits, original(input_ids=ids).logits)


def test_tied_head_check_sees_through_the_lora_wrapper(tiny_llama, tmp_path):
    from lm_eval_approx.harness.tied_head import head_already_tied, install

    install()
    result = train_model(tiny_llama, AGNEWS, toy_examples(8), TrainingRecipe(epochs=1, **FAST), tmp_path,
                         progress=False)
    assert head_already_tied(result.model.get_base_model())
    assert not head_already_tied(load_model(tiny_llama))
    result.model.tie_weights()  # what HFLM does after loading; must not raise once installed


def test_interrupted_training_resumes_to_the_same_adapter(tiny_llama, tmp_path):
    examples, recipe = toy_examples(), TrainingRecipe(epochs=3, patience=0, **FAST)
    straight = train_adapter(tiny_llama, AGNEWS, examples, recipe, tmp_path / "straight", progress=False)

    target = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_adapter(tiny_llama, AGNEWS, examples, recipe, target, progress=False, on_epoch_end=crash_after_first_epoch)
    assert not target.exists(), "an interrupted run must not leave a folder that looks complete"
    assert (work_dir_for(target) / CHECKPOINT_FILE).is_file()
    resumed = train_adapter(tiny_llama, AGNEWS, examples, recipe, target, progress=False)
    record = json.loads((resumed / TRAINING_FILE).read_text())
    assert record["resumed_from_epoch"] == 1 and record["epochs_run"] == 3
    # what the first attempt clocked to its checkpoint is kept, so a cell's cost can add it back
    assert 0 < record["seconds_at_resume"] < TrainingHistory.from_dict(record).clocked_seconds()
    assert "seconds_at_resume" not in json.loads((straight / TRAINING_FILE).read_text())
    assert not work_dir_for(target).exists()
    _assert_same_tensors(_adapter_tensors(straight), _adapter_tensors(resumed))
    assert json.loads((straight / "curves.json").read_text())["train_loss"] == record["train_loss"]


def test_a_checkpoint_of_other_inputs_restarts_cleanly(tiny_llama, tmp_path, monkeypatch):
    examples = toy_examples(24)
    target = tmp_path / "adapter"

    def crash(epoch, history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(tiny_llama, AGNEWS, examples, TrainingRecipe(epochs=2, seed=1, **FAST), target,
                      progress=False, on_epoch_end=crash)
    recipe = TrainingRecipe(epochs=2, **FAST)
    out = train_adapter(tiny_llama, AGNEWS, examples, recipe, target, progress=False)
    assert json.loads((out / TRAINING_FILE).read_text())["resumed_from_epoch"] is None
    fresh = train_adapter(tiny_llama, AGNEWS, examples, recipe, tmp_path / "fresh", progress=False)
    _assert_same_tensors(_adapter_tensors(out), _adapter_tensors(fresh))

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished folder of the same inputs is reused, not retrained")

    monkeypatch.setattr(training, "train_model", must_not_train)
    assert train_adapter(tiny_llama, AGNEWS, examples, recipe, target, progress=False) == out


def test_early_stopping_keeps_the_best_epoch(tiny_llama, tmp_path, monkeypatch):
    examples = toy_examples(24)
    common = dict(FAST, scheduler="constant_with_warmup", patience=1)
    one_epoch = train_adapter(tiny_llama, AGNEWS, examples, TrainingRecipe(epochs=1, **common), tmp_path / "one",
                              progress=False)
    scripted = iter([5.0, 1.0, 2.0, 3.0, 4.0])  # initial, then epochs 1, 2, ...: best is epoch 1
    real = training._validation_loss

    def scripted_loss(*args):
        real(*args)  # same work (and the same RNG draws of the data loader) as an unscripted run
        return next(scripted)

    monkeypatch.setattr(training, "_validation_loss", scripted_loss)
    stopped = train_adapter(tiny_llama, AGNEWS, examples, TrainingRecipe(epochs=4, **common), tmp_path / "stop",
                            progress=False)
    record = json.loads((stopped / TRAINING_FILE).read_text())
    assert record["stopped_early"] and record["epochs_run"] == 2 and record["best_epoch"] == 1
    _assert_same_tensors(_adapter_tensors(one_epoch), _adapter_tensors(stopped))


def test_batched_weighted_loss_agrees_with_a_per_example_loop(tiny_gpt2):
    model, tokenizer = load_model(tiny_gpt2), None
    from lm_eval_approx.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_gpt2)
    for spec in (AGNEWS, MSMARCO):
        examples = toy_examples(6, weights=True)
        if spec is MSMARCO:
            examples = [SelectedExample(id=e.id, text=e.text + " extra" * int(e.id), weight=e.weight) for e in examples]
        rows = normalise_weights(render_examples(tokenizer, spec, examples, max_length=64))
        batch = training_batch(rows, tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            losses = example_losses_from_logits(logits, batch["labels"], spec.kind)
        fast = float((losses * batch["weight"]).mean())
        singles = []
        for ex in examples:
            ll = _per_example_loglikelihoods(model, tokenizer, spec, [ex])[0]
            n_targets = sum(t != IGNORE_INDEX for t in render_example(tokenizer, spec, ex, 64)[0].labels)
            singles.append(-ll if spec is AGNEWS else -ll / n_targets)
        weights = [e.weight for e in examples]
        slow = sum(w * l for w, l in zip(weights, singles)) / sum(weights)
        assert fast == pytest.approx(slow, rel=1e-5)


def test_rendering_masks_the_context_and_checks_labels(tiny_tokenizer):
    [row] = render_example(tiny_tokenizer, AGNEWS, SelectedExample(id="a", text="team match", label=1), 64)
    targets = [t for t in row.labels if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(targets) == " Sports" and row.labels[0] == IGNORE_INDEX
    assert row.input_ids[-len(targets):] == targets
    [short] = render_example(tiny_tokenizer, AGNEWS, SelectedExample(id="a", text="team match " * 30, label=3), 8)
    assert len(short.input_ids) == 8 and tiny_tokenizer.decode([t for t in short.labels if t >= 0]) == " Sci/Tech"
    for bad in (None, 4, -1):
        with pytest.raises(TrainingDataError, match="label"):
            render_example(tiny_tokenizer, AGNEWS, SelectedExample(id="a", text="x", label=bad), 64)
    windows = render_example(tiny_tokenizer, MSMARCO, SelectedExample(id="p", text="the quick brown fox", weight=2.0), 4)
    passage = windows[0]
    assert len(passage.input_ids) == 4 and passage.labels[1:] == passage.input_ids[1:]
    n = len(tiny_tokenizer("the quick brown fox")["input_ids"])
    assert len(windows) > 1 and sum(sum(t != IGNORE_INDEX for t in w.labels) for w in windows) == n
    assert sum(w.weight for w in windows) == pytest.approx(2.0)


def test_validation_split_is_seeded_disjoint_and_optional():
    items = list(range(20))
    train, val = split_validation(items, 0.25, seed=3)
    assert len(val) == 5 and sorted(train + val) == items and not set(train) & set(val)
    assert split_validation(items, 0.25, seed=3) == (train, val) != split_validation(items, 0.25, seed=4)
    assert split_validation(items, 0.0, seed=3) == (items, [])
    assert split_validation([7], 0.5, seed=0) == ([7], [])


def test_full_finetuning_saves_a_model_folder(tiny_gpt2, tmp_path):
    recipe = TrainingRecipe(method="full", epochs=1, **FAST)
    examples = toy_examples(16)
    result = train_model(tiny_gpt2, AGNEWS, examples, recipe, tmp_path / "work", progress=False)
    out = save_training(result, tiny_gpt2, AGNEWS, examples, recipe, tmp_path / "full")
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(load_model(str(out))(input_ids=ids).logits, result.model(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(load_model(tiny_gpt2)(input_ids=ids).logits, result.model(input_ids=ids).logits)


def test_bad_training_inputs_are_named_errors(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="target_modules"):
        train_model(tiny_llama, AGNEWS, toy_examples(8), TrainingRecipe(target_modules=("nope",)), tmp_path)
    with pytest.raises(ConfigError, match="examples"):
        train_model(tiny_llama, AGNEWS, [], TrainingRecipe(), tmp_path)


def test_cli_train_and_finetune(tiny_llama, tmp_path):
    from lm_eval_approx.cli import main

    selection = write_selection(tmp_path / "sel.jsonl", toy_examples(16))
    flags = ["--epochs", "1", "--batch-size", "8", "--no-progress"]
    assert main(["train", "--base", tiny_llama, "--task", "approx_agnews", "--data", str(selection),
                 "--out", str(tmp_path / "t"), "--limit", "12", *flags]) == 0
    record = json.loads((tmp_path / "t" / TRAINING_FILE).read_text())
    assert record["n_train"] + record["n_validation"] == 12
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in toy_examples(16)))
    assert main(["finetune", "--base", tiny_llama, "--task", "approx_agnews", "--data", str(corpus),
                 "--limit", "10", "--out", str(tmp_path / "f"), *flags]) == 0
    assert json.loads((tmp_path / "f" / TRAINING_FILE).read_text())["n_train"] == 9
    unlabeled = tmp_path / "unlabeled.jsonl"
    unlabeled.write_text(json.dumps({"text": "no label here"}) + "\n")
    assert main(["finetune", "--base", tiny_llama, "--task", "approx_agnews", "--data", str(unlabeled),
                 "--out", str(tmp_path / "u"), *flags]) == 2


def test_finetune_from_the_mirror_uses_true_labels(tiny_llama, tmp_path, mirror, monkeypatch):
    from lm_eval_approx.commands.train import load_examples
    import argparse

    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(mirror))
    args = argparse.Namespace(data="ag_news:train", limit=8, data_seed=None, data_source="corpus")
    rows = load_examples(args, AGNEWS, seed=0)
    assert len(rows) == 8 and all(r.label in range(4) and r.label_text == AGNEWS.choices[r.label] for r in rows)


@pytest.mark.slow
def test_smollm2_adapter_reloads_in_lm_eval_with_identical_loglikelihoods(tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_approx.harness import tied_head as peft_compat
    from lm_eval_approx.models.loading import resolve_model

    peft_compat.install()
    base = resolve_model("smollm2-135m")
    examples = toy_examples(4)
    recipe = TrainingRecipe(epochs=1, batch_size=4, max_length=32, validation_fraction=0.0)
    result = train_model(base, AGNEWS, examples, recipe, tmp_path / "work", progress=False)
    out = save_training(result, base, AGNEWS, examples, recipe, tmp_path / "adapter")
    probes = [SelectedExample(id=d.id, text=d.text, label=c) for d in examples[:1] for c in range(AGNEWS.num_classes)]
    ours = _per_example_loglikelihoods(result.model, result.tokenizer, AGNEWS, probes)
    requests = [Instance("loglikelihood", {}, (AGNEWS.context(p.text), AGNEWS.continuations()[p.label]), i)
                for i, p in enumerate(probes)]
    lm = HFLM(pretrained=base, peft=str(out), device="cpu", batch_size=8)
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert theirs == pytest.approx(ours, abs=1e-3)


@pytest.mark.parametrize("spec", [AGNEWS, MSMARCO], ids=["classification", "lm"])
def test_micro_batches_and_gradient_checkpointing_give_the_same_gradients(tiny_llama, spec):
    """The memory options change how a batch's gradient is computed, not the gradient: slices of 3
    (each trimmed to its own padding) and recomputed activations sum to the whole batch's."""
    from accelerate import Accelerator

    from lm_eval_approx.training.epoch import backward_in_parts
    from lm_eval_approx.training.model import prepare_model

    examples = toy_examples(8, weights=True)
    if spec is MSMARCO:
        examples = [SelectedExample(id=e.id, text=e.text + " extra words" * (i % 3), weight=e.weight)
                    for i, e in enumerate(examples)]

    def gradients(**extra):
        recipe = TrainingRecipe(**dict(FAST, lora_dropout=0.0), **extra)
        model, tokenizer = prepare_model(tiny_llama, recipe)
        rows = normalise_weights(render_examples(tokenizer, spec, examples, 64))
        batch = training_batch(rows, tokenizer.pad_token_id)
        loss = backward_in_parts(Accelerator(), model, batch, spec.kind, True, recipe.micro_batch_size)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    whole_loss, whole = gradients()
    for extra in ({"micro_batch_size": 3}, {"gradient_checkpointing": True}):
        loss, grads = gradients(**extra)
        assert loss == pytest.approx(whole_loss, rel=1e-5)
        for name, grad in whole.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=f"{extra}: {name}")


def test_memory_options_train_end_to_end_and_are_recipe_fields(tiny_llama, tmp_path):
    recipe = TrainingRecipe(**FAST, epochs=1, micro_batch_size=3, gradient_checkpointing=True)
    result = train_model(tiny_llama, AGNEWS, toy_examples(16), recipe, tmp_path / "w", progress=False)
    assert result.history.epochs_run == 1 and result.history.train_loss[0] > 0
    assert TrainingRecipe(micro_batch_size=3).recipe_hash() != TrainingRecipe().recipe_hash()
    assert TrainingRecipe.from_options({"gradient_checkpointing": "true"}).gradient_checkpointing is True
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        TrainingRecipe.from_options({"gradient_checkpointing": "maybe"})


@pytest.mark.parametrize("base_name, top", [("tiny_llama", "model.layers.1."), ("tiny_gpt2", "transformer.h.1.")])
def test_lora_layers_adapts_only_the_top_blocks_and_the_head(request, tmp_path, base_name, top):
    """lora_layers=1 on a 2-block model: LoRA on the top block's projections and the head only; the
    lower block keeps its weights and gets no gradient; the default (0) keeps every recipe hash."""
    from lm_eval_approx.training.model import block_index, prepare_model

    base = request.getfixturevalue(base_name)
    recipe = TrainingRecipe(**FAST, epochs=1, lora_layers=1)
    model, _ = prepare_model(base, recipe)
    adapted = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted and all(top in n or "lm_head" in n for n in adapted), adapted
    assert any("lm_head" in n for n in adapted) and any(top in n for n in adapted)
    result = train_model(base, AGNEWS, toy_examples(16), recipe, tmp_path / "w", progress=False)
    theta0 = load_model(base).state_dict()
    merged = result.model.merge_and_unload().state_dict()
    lower = [n for n in theta0 if block_index(n) == 0]
    assert lower and all(torch.equal(merged[n], theta0[n]) for n in lower)
    assert any(not torch.equal(merged[n], theta0[n]) for n in theta0 if block_index(n) == 1)
    assert TrainingRecipe(**FAST).recipe_hash() == TrainingRecipe(**FAST, lora_layers=0).recipe_hash()
    assert TrainingRecipe(**FAST).recipe_hash() != recipe.recipe_hash()
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match="lora_layers"):
            TrainingRecipe(lora_layers=bad)
    with pytest.raises(ConfigError, match="lora_layers"):
        TrainingRecipe(method="full", lora_layers=2)


def test_class_balance_weights_each_label_equally_and_trains_as_explicit_weights(tiny_llama, tmp_path):
    """``class_balance=balanced`` on skewed labels gives every label the same total weight (by the
    definition w · n / (C · n_y)) and trains exactly like the plain recipe on examples whose weights
    were multiplied by hand; a language-modelling task refuses it by name."""
    from dataclasses import replace

    from lm_eval_approx.training.rendering import balance_classes

    skewed = [replace(e, label=0 if i % 3 else e.label) for i, e in enumerate(toy_examples(24, weights=True))]
    balanced = balance_classes(skewed)
    counts = {y: sum(e.label == y for e in skewed) for y in {e.label for e in skewed}}
    for before, after in zip(skewed, balanced):
        assert after.weight == pytest.approx(before.weight * len(skewed) / (len(counts) * counts[before.label]))
        assert (after.id, after.text, after.label) == (before.id, before.text, before.label)
    share = {y: sum(e.weight / b.weight for e, b in zip(balanced, skewed) if e.label == y) for y in counts}
    assert all(s == pytest.approx(len(skewed) / len(counts)) for s in share.values())

    recipe = TrainingRecipe(**FAST, epochs=1, class_balance="balanced")
    assert recipe.recipe_hash() != TrainingRecipe(**FAST, epochs=1).recipe_hash()
    assert TrainingRecipe(**FAST).recipe_hash() == TrainingRecipe(**FAST, class_balance="none").recipe_hash()
    by_recipe = train_model(tiny_llama, AGNEWS, skewed, recipe, tmp_path / "a", progress=False)
    by_hand = train_model(tiny_llama, AGNEWS, balanced, TrainingRecipe(**FAST, epochs=1), tmp_path / "b", progress=False)
    assert by_recipe.history.train_loss == pytest.approx(by_hand.history.train_loss, rel=1e-6)
    first, second = by_recipe.model.state_dict(), by_hand.model.state_dict()
    assert all(torch.allclose(first[n], second[n], atol=1e-6) for n in first)
    with pytest.raises(ConfigError, match="class_balance"):
        train_model(tiny_llama, MSMARCO, [SelectedExample(id="p", text="a passage")], recipe, tmp_path / "c",
                    progress=False)
    with pytest.raises(ConfigError, match="class_balance"):
        TrainingRecipe(class_balance="per-class")
