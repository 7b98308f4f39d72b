"""The fast retraining options: length-bucketed batches, 15-bit LoRA dropout and bf16
autocast. Each is checked against its slow twin: bucketed batches visit every example once and give
the per-example losses of one-row-at-a-time forwards; the fast dropout has the distribution it
claims; a run with all three resumes to the same adapter as an uninterrupted one."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _specs import AGNEWS
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.training.batching import BucketedBatches, padded_positions
from lm_eval_approx.training.dropout import LEVELS, FastDropout, drop_threshold, use_fast_dropout
from lm_eval_approx.training.loop import TRAINING_FILE, train_adapter, train_model
from lm_eval_approx.training.prepared import SHUFFLE_STRIDE
from lm_eval_approx.training.loss import batch_example_losses
from lm_eval_approx.training.model import prepare_model
from lm_eval_approx.training.recipe import OLD_TRAINING_PATH, TrainingRecipe
from lm_eval_approx.training.rendering import EpochShuffle, render_examples, training_batch
from test_training import FAST, _adapter_tensors, _assert_same_tensors, crash_after_first_epoch, toy_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST_RECIPE = dict(batch_order="bucketed", dropout_sampler="fast", mixed_precision="bf16")


def _lengths(n: int, seed: int = 0) -> list[int]:
    return torch.randint(5, 120, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("n, batch_size", [(270, 16), (33, 4), (7, 16), (128, 16)])
def test_bucketed_batches_visit_every_example_once_in_as_many_batches(n, batch_size):
    lengths = _lengths(n)
    batches = BucketedBatches(EpochShuffle(n, 3, SHUFFLE_STRIDE), lengths, batch_size)
    for epoch in range(3):
        batches.set_epoch(epoch)
        order = list(batches)
        assert sorted(i for batch in order for i in batch) == list(range(n))
        assert len(order) == len(batches) == math.ceil(n / batch_size)
        assert sum(len(b) < batch_size for b in order) <= 1


def test_bucketed_order_depends_only_on_seed_and_epoch_and_cuts_padding():
    lengths = _lengths(270)
    one, two = (BucketedBatches(EpochShuffle(270, 0, SHUFFLE_STRIDE), lengths, 16) for _ in range(2))
    one.set_epoch(4)
    two.set_epoch(4)
    assert list(one) == list(two)
    two.set_epoch(5)
    assert list(one) != list(two)
    other_seed = BucketedBatches(EpochShuffle(270, 1, SHUFFLE_STRIDE), lengths, 16)
    other_seed.set_epoch(4)
    assert list(other_seed) != list(one)
    shuffled = EpochShuffle(270, 0, SHUFFLE_STRIDE)
    shuffled.set_epoch(4)
    plain = list(shuffled)
    real, padded_plain = padded_positions([plain[i:i + 16] for i in range(0, 270, 16)], lengths)
    real_bucketed, padded_bucketed = padded_positions(list(one), lengths)
    assert real == real_bucketed
    assert padded_bucketed < 0.75 * padded_plain


def test_bucketed_batches_reject_mismatched_lengths():
    with pytest.raises(ConfigError):
        BucketedBatches(EpochShuffle(10, 0, SHUFFLE_STRIDE), [3] * 9, 4)


def test_bucketed_batches_give_the_losses_of_one_row_at_a_time(tiny_llama):
    """The slow twin: each example alone, unpadded; the fast path: its bucketed, padded batch."""
    recipe = TrainingRecipe(batch_size=4, lora_dropout=0.0)
    model, tokenizer = prepare_model(tiny_llama, recipe)
    model.eval()
    examples = [e.__class__(id=e.id, text=e.text + " more words" * (i % 7), label=e.label)
                for i, e in enumerate(toy_examples(22))]
    rows = render_examples(tokenizer, AGNEWS, examples, 128)
    batches = BucketedBatches(EpochShuffle(len(rows), 0, SHUFFLE_STRIDE), [len(r.input_ids) for r in rows], 4)
    batched = torch.zeros(len(rows))
    with torch.no_grad():
        for batch in batches:
            batched[batch] = batch_example_losses(model, training_batch([rows[i] for i in batch], tokenizer.pad_token_id),
                                                  AGNEWS.kind, True)
        alone = torch.stack([batch_example_losses(model, training_batch([row], tokenizer.pad_token_id), AGNEWS.kind,
                                                  False)[0] for row in rows])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_fast_dropout_has_the_distribution_it_claims():
    torch.manual_seed(0)
    dropout = FastDropout(0.05).train()
    x = torch.ones(1000, 1000)
    y = dropout(x)
    share = drop_threshold(0.05) / LEVELS
    assert abs(share - 0.05) <= 0.5 / LEVELS
    dropped = float((y == 0).float().mean())
    assert abs(dropped - share) < 5 * math.sqrt(share * (1 - share) / x.numel())
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(dropout.scale)))
    assert abs(float(y.mean()) - 1.0) < 5 * math.sqrt(share / (1 - share) / x.numel())
    halves = (y[:, 0::2] == 0).float().mean(), (y[:, 1::2] == 0).float().mean()
    assert all(abs(float(h) - share) < 5 * math.sqrt(share * (1 - share) / (x.numel() / 2)) for h in halves)
    odd = torch.ones(3, 5)
    assert dropout(odd).shape == odd.shape


def test_fast_dropout_is_seeded_by_torch_and_the_identity_in_eval_mode():
    dropout = FastDropout(0.3).train()
    x = torch.randn(64, 33)
    torch.manual_seed(7)
    first = dropout(x)
    torch.manual_seed(7)
    assert torch.equal(first, dropout(x))
    assert not torch.equal(first, dropout(x))
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="dropout p"):
        FastDropout(1.0)


def test_the_recipe_swaps_every_lora_dropout(tiny_llama):
    model, _ = prepare_model(tiny_llama, TrainingRecipe(dropout_sampler="fast"))
    fast = [m for m in model.modules() if isinstance(m, FastDropout)]
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert len(fast) == len(lora_layers) > 0
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    plain, _ = prepare_model(tiny_llama, TrainingRecipe(dropout_sampler="torch"))
    assert not any(isinstance(m, FastDropout) for m in plain.modules())
    assert use_fast_dropout(plain) == len(lora_layers)


def test_fast_fields_enter_the_hash_only_when_not_the_old_path():
    base = TrainingRecipe(**OLD_TRAINING_PATH)
    for change in ({"batch_order": "bucketed"}, {"dropout_sampler": "fast"}):
        assert TrainingRecipe(**{**OLD_TRAINING_PATH, **change}).recipe_hash() != base.recipe_hash()
    assert TrainingRecipe().recipe_hash() != base.recipe_hash()
    assert TrainingRecipe(mixed_precision="no", batch_order="shuffled", dropout_sampler="torch").recipe_hash() \
        == base.recipe_hash()
    for name, value in (("batch_order", "sorted"), ("dropout_sampler", "numpy")):
        with pytest.raises(ConfigError) as info:
            TrainingRecipe(**{name: value})
        assert info.value.field == name


def test_the_fast_recipe_trains_resumes_and_shares_a_process_with_fp32(tiny_llama, tmp_path):
    """Resume gives the same adapter with every fast option on, and one process can train fp32
    then bf16 (Accelerate keeps one state per process)."""
    examples = toy_examples()
    fp32 = train_model(tiny_llama, AGNEWS, examples, TrainingRecipe(epochs=1, **FAST), tmp_path / "fp32", progress=False)
    assert fp32.history.epochs_run == 1
    recipe = TrainingRecipe(epochs=3, patience=0, **{**FAST, **FAST_RECIPE})
    straight = train_adapter(tiny_llama, AGNEWS, examples, recipe, tmp_path / "straight", progress=False)

    target = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_adapter(tiny_llama, AGNEWS, examples, recipe, target, progress=False, on_epoch_end=crash_after_first_epoch)
    resumed = train_adapter(tiny_llama, AGNEWS, examples, recipe, target, progress=False)
    record = json.loads((resumed / TRAINING_FILE).read_text())
    assert record["resumed_from_epoch"] == 1 and record["epochs_run"] == 3
    _assert_same_tensors(_adapter_tensors(straight), _adapter_tensors(resumed))
    losses = json.loads((straight / "curves.json").read_text())["train_loss"]
    assert losses[-1] < losses[0]


def test_a_training_records_where_its_time_and_tokens_go(tiny_llama, tmp_path):
    examples = [e.__class__(id=e.id, text=e.text + " more words" * (i % 9), label=e.label)
                for i, e in enumerate(toy_examples(48))]
    padded = {}
    for order in ("shuffled", "bucketed"):
        history = train_model(tiny_llama, AGNEWS, examples, TrainingRecipe(epochs=1, batch_order=order, **FAST),
                              tmp_path / order, progress=False).history
        clock = history.phase_seconds
        assert set(clock) == {"render", "forward", "backward", "optimizer", "validation"}
        assert clock["forward"] > 0 and clock["backward"] > 0 and clock["optimizer"] > 0 and clock["render"] > 0
        assert sum(clock.values()) <= history.train_seconds + clock["render"] + clock["validation"] + 1.0
        padded[order] = history.tokens
    assert padded["shuffled"]["real"] == padded["bucketed"]["real"]
    assert padded["bucketed"]["padded"] < padded["shuffled"]["padded"]


def test_cached_probes_equal_measured_ones_and_skip_theta_f_and_theta0(tiny_llama, tmp_path, monkeypatch):
    """θf's monitor distribution and the probe values at θ0 are cached stages; the slow twin is the
    probe measured in full (θf loaded, θ0 scored) by a run with another seed and no cache."""
    from lm_eval_approx.training import stop_signals
    from lm_eval_approx.training.probes import teacher_probes

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    expert = train_adapter(tiny_llama, AGNEWS, toy_examples(), TrainingRecipe(epochs=1, **FAST), tmp_path / "expert",
                           progress=False)
    texts = [e.text for e in toy_examples(60)[48:]]
    examples = toy_examples(24)

    def retrain(seed: int, folder: str):
        recipe = TrainingRecipe(epochs=2, seed=seed, stop_on="teacher_agreement", patience=0, **FAST)
        probes = stop_signals.probes_for_texts(AGNEWS, recipe, texts, base=tiny_llama, finetuned=str(expert),
                                               batch_size=4, max_length=64)
        return train_model(tiny_llama, AGNEWS, examples, recipe, tmp_path / folder, progress=False, probes=probes)

    first = retrain(0, "first").history.probes
    loads = []
    from lm_eval_approx.cache import stages

    monkeypatch.setattr(stop_signals, "run_stage", _counting(stop_signals.run_stage, loads))
    monkeypatch.setattr(stages, "run_stage", _counting(stages.run_stage, loads))
    second = retrain(1, "second").history.probes
    assert loads == [True, True], "the second retraining must read θf's distribution and θ0's values from the cache"
    from lm_eval_approx.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    measured = teacher_probes(load_model(str(expert)), tokenizer, AGNEWS, texts, 4, 64).measure
    from lm_eval_approx.training.model import prepare_model

    lora_theta0, _ = prepare_model(tiny_llama, TrainingRecipe(seed=1, **FAST))
    at_theta0 = measured(lora_theta0.eval(), tokenizer)
    for name in ("teacher_kl", "teacher_agreement"):
        assert first[name][0] == second[name][0] == at_theta0[name]
    assert measured(load_model(tiny_llama), tokenizer) == at_theta0


def _counting(run_stage, seen: list):
    def wrapped(name, inputs, compute):
        record = run_stage(name, inputs, compute)
        seen.append(record.cached)
        return record
    return wrapped


def test_auto_precision_resolves_by_the_hardware_and_is_stored_resolved(tmp_path, monkeypatch):
    from lm_eval_approx.training import precision

    with_bf16 = tmp_path / "bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert precision.cpu_has_native_bf16(with_bf16) and not precision.cpu_has_native_bf16(without)
    assert not precision.cpu_has_native_bf16(tmp_path / "missing")
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(precision, "native_bf16", lambda native=native: native)
        recipe = TrainingRecipe(mixed_precision="auto")
        assert recipe.mixed_precision == expected
        assert recipe.recipe_hash() == TrainingRecipe(mixed_precision=expected).recipe_hash()
        assert TrainingRecipe.from_json(recipe.to_json()) == recipe


def test_the_packing_check_runs_in_full_precision_under_mixed_precision_training(tiny_llama, tmp_path, caplog):
    """Accelerate wraps the trained model's forward in bf16 autocast; the probe's packing self-check
    must still compare packed and carrier rows in fp32 (rounding is not a packing fault), so the
    probe keeps packing: no fallback warning (without the fix, bf16 rounding tripped the check)."""
    from lm_eval_approx.training.probes import teacher_probes

    expert = train_adapter(tiny_llama, AGNEWS, toy_examples(), TrainingRecipe(epochs=1, **FAST), tmp_path / "expert",
                           progress=False)
    from lm_eval_approx.models.loading import load_model, load_tokenizer

    probe = teacher_probes(load_model(str(expert)), load_tokenizer(tiny_llama), AGNEWS,
                           [e.text for e in toy_examples(40)[24:]], 4, 64)
    recipe = TrainingRecipe(epochs=1, stop_on="teacher_agreement", patience=0, **{**FAST, **FAST_RECIPE})
    with caplog.at_level("WARNING", logger="lm_eval_approx.features.pseudo_labels"):
        history = train_model(tiny_llama, AGNEWS, toy_examples(24), recipe, tmp_path / "bf16", progress=False,
                              probes=[probe]).history
    assert "scoring without packing" not in caplog.text
    assert len(history.probes["teacher_agreement"]) == 2
