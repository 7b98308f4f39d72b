"""Where a retraining-rule cell's time goes: each part measured on the cell's own data, then scaled by
the counts the published grid recorded.

    python benchmarks/cell_profile.py --grid agnews_rule [--batches 4]
    python benchmarks/cell_profile.py --grid msmarco_quality [--batches 4]

The data is the grid's (``results/cpu/<grid>.yaml``): its candidate pool, a random selection of k of
it (a cell's selection has the pool's lengths), the task's prompt, the 256 monitor texts of the
retraining rule and the recipe. Measured, for the old recipe and for the fast one
(``mixed_precision: bf16``, ``batch_order: bucketed``, ``dropout_sampler: fast``):

* rendering the selection into token ids;
* ``--batches`` training batches, split into forward, backward and optimizer, and the padded share of
  an epoch's token positions (from the epoch's real batches, not timed);
* one pass of the monitor probe and one of the validation loss;
* an operator profile of one training step (``torch.profiler``): the share of matrix products, LoRA
  dropout's random masks, attention, and the rest.

An epoch costs (batches per epoch) × (per batch) + probe + validation; a cell costs its epochs run
(the mean the grid recorded) times that, plus the probes before training (θf's distribution and
θ0's values) and the rendering. The printout sets this beside the grid's recorded retraining
seconds and prints ``<part>, old / new: N.NNx`` lines. About 5 minutes per grid on two cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FAST = {"mixed_precision": "bf16", "batch_order": "bucketed", "dropout_sampler": "fast"}
# torch.profiler operator names grouped into what they are in a LoRA training step.
OP_GROUPS = {"matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
             "LoRA dropout masks": ("aten::bernoulli_", "aten::random_", "aten::bitwise_and_", "aten::ge"),
             "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
             "loss (softmax, NLL)": ("aten::_log_softmax", "aten::nll_loss", "aten::cross_entropy",
                                     "aten::_log_softmax_backward", "aten::nll_loss_backward")}


def grid_inputs(grid: str, k: int | None):
    """(task spec, selection examples, monitor texts, recipe, recorded cells) of a published grid."""
    import numpy as np
    import yaml

    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.data.selection_file import SelectedExample
    from lm_eval_approx.tasks.kinds import CLASSIFICATION
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training.recipe import TrainingRecipe
    from lm_eval_approx.training.retraining_rule import rule_for_task
    from lm_eval_approx.training.stop_signals import monitor_texts

    config = yaml.safe_load((ROOT / "results" / "cpu" / f"{grid}.yaml").read_text())
    spec = get_task_spec(config["task"])
    corpus = load_corpus(config["corpus"]["spec"], config["corpus"]["size"], config["corpus"]["seed"])
    k = k or config["budgets"][0]
    picks = np.random.default_rng(0).choice(len(corpus.texts), size=k, replace=False)
    classification = spec.kind == CLASSIFICATION
    examples = [SelectedExample(id=corpus.ids[i], text=corpus.texts[i], label=int(n % spec.num_classes)
                                if classification else None) for n, i in enumerate(picks)]
    recipe = TrainingRecipe.from_dict({**config.get("recipe", {}), **rule_for_task(spec)})
    texts = monitor_texts(spec, recipe, {e.text for e in examples})
    cells = []
    for path in sorted((ROOT / "results" / "cpu" / grid / "results").glob("*.json")):
        extras = json.loads(path.read_text())["config"].get("leaderboard", {})
        if extras.get("kind") == "approx" and extras.get("retraining"):
            cells.append({"training": extras["training_seconds"], "epochs": extras["retraining"]["epochs_run"],
                          "wall": extras["wall_seconds"]})
    return spec, examples, texts, recipe, cells


def measure(spec, examples, texts, recipe, batches: int, finetuned: str | None) -> dict:
    """Per-part seconds of one recipe on this data (see the module docstring)."""
    from lm_eval_approx.training.batching import BucketedBatches, padded_positions
    from lm_eval_approx.training.rendering import EpochShuffle, normalise_weights, render_examples, split_validation, \
        training_batch
    from lm_eval_approx.training.epoch import backward_in_parts
    from lm_eval_approx.training.loop import _validation_loss
    from lm_eval_approx.training.prepared import SHUFFLE_STRIDE
    from lm_eval_approx.training.precision import accelerator_for
    from lm_eval_approx.training.model import prepare_model
    from lm_eval_approx.training.probes import run_probes
    from lm_eval_approx.models.head_positions import supports_head_positions
    from lm_eval_approx.training import stop_signals

    model, tokenizer = prepare_model("smollm2-135m", recipe)
    began = time.perf_counter()
    train, held = split_validation(examples, recipe.validation_fraction, recipe.seed)
    rows = normalise_weights(render_examples(tokenizer, spec, train, recipe.max_length))
    val = render_examples(tokenizer, spec, held, recipe.max_length)
    render = time.perf_counter() - began
    lengths = [len(r.input_ids) for r in rows]
    sampler = EpochShuffle(len(rows), recipe.seed, SHUFFLE_STRIDE)
    if recipe.batch_order == "bucketed":
        order = list(BucketedBatches(sampler, lengths, recipe.batch_size))
    else:
        flat = list(sampler)
        order = [flat[i:i + recipe.batch_size] for i in range(0, len(flat), recipe.batch_size)]
    real, padded = padded_positions(order, lengths)
    accelerator = accelerator_for(recipe)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate)
    model, optimizer = accelerator.prepare(model, optimizer)
    head = supports_head_positions(model)
    clock = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    profile = None
    for step, batch_ids in enumerate(order[: batches + 1]):
        batch = training_batch([rows[i] for i in batch_ids], tokenizer.pad_token_id)
        timed = clock if step else {}  # the first step warms up and is not counted
        if step == 1:
            profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profile.__enter__()
        backward_in_parts(accelerator, model, batch, spec.kind, head, recipe.micro_batch_size, timed)
        began = time.perf_counter()
        accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if step:
            clock["optimizer"] += time.perf_counter() - began
        if step == 1:
            profile.__exit__(None, None, None)
    per_batch = {name: seconds / batches for name, seconds in clock.items()}
    val_loader = torch.utils.data.DataLoader(val, batch_size=recipe.batch_size,
                                             collate_fn=lambda b: training_batch(b, tokenizer.pad_token_id))
    began = time.perf_counter()
    _validation_loss(accelerator, model, val_loader, spec.kind, head)
    validation = time.perf_counter() - began
    began = time.perf_counter()
    stop_signals.CACHE_PROBES = recipe.batch_order == "bucketed"  # the old path had no probe caches
    probes = stop_signals.probes_for_texts(spec, recipe, texts, base="smollm2-135m", finetuned=finetuned)
    stop_signals.CACHE_PROBES = True
    probe_setup = time.perf_counter() - began
    began = time.perf_counter()
    run_probes(probes, accelerator.unwrap_model(model), tokenizer)
    probe = time.perf_counter() - began
    return {"render": render, "per_batch": per_batch, "batches_per_epoch": len(order), "validation": validation,
            "probe": probe, "probe_setup": probe_setup, "real": real, "padded": padded,
            "ops": op_shares(profile)}


def op_shares(profile) -> dict[str, float]:
    """Share of the profiled step's self CPU time per operator group (the rest: ``other``)."""
    totals = {name: 0.0 for name in OP_GROUPS}
    everything = 0.0
    for event in profile.key_averages():
        everything += event.self_cpu_time_total
        for group, prefixes in OP_GROUPS.items():
            if event.key.startswith(prefixes):
                totals[group] += event.self_cpu_time_total
                break
    shares = {name: value / everything for name, value in totals.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return shares


def cell_seconds(part: dict, epochs: float, probe_setup: bool = True) -> dict[str, float]:
    epoch_train = part["batches_per_epoch"] * sum(part["per_batch"].values())
    return {"render": part["render"], "train": epochs * epoch_train, "probes": (epochs + 1) * part["probe"],
            "validation": (epochs + 1) * part["validation"],
            "probe set-up (θf)": part["probe_setup"] if probe_setup else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, choices=("agnews_rule", "msmarco_quality"))
    parser.add_argument("--batches", type=int, default=4, help="timed training batches per recipe")
    parser.add_argument("--k", type=int, default=None, help="selection size (default: the grid's budget)")
    parser.add_argument("--finetuned", default=None, help="θf for a teacher probe (default: θ0 stands in; the cost "
                                                            "of a probe does not depend on the weights)")
    args = parser.parse_args()
    from lm_eval_approx.training.recipe import TrainingRecipe

    spec, examples, texts, recipe, cells = grid_inputs(args.grid, args.k)
    finetuned = args.finetuned or "smollm2-135m"
    fast = TrainingRecipe.from_dict({**recipe.to_dict(), **FAST})
    old, new = (measure(spec, examples, texts, r, args.batches, finetuned) for r in (recipe, fast))
    epochs = statistics.mean(c["epochs"] for c in cells) if cells else recipe.epochs
    recorded = statistics.mean(c["training"] for c in cells) if cells else float("nan")
    print(f"{args.grid}: {spec.name}, {len(examples)} selected documents, {len(texts)} monitor texts, "
          f"{len(cells)} recorded cells, {epochs:.2f} epochs run on average (of {recipe.epochs})")
    for name, part in (("old", old), ("new", new)):
        b = part["per_batch"]
        print(f"  {name}: per batch forward {b['forward']:.2f} s, backward {b['backward']:.2f} s, optimizer "
              f"{b['optimizer']:.3f} s; {part['batches_per_epoch']} batches per epoch; probe {part['probe']:.1f} s; "
              f"validation {part['validation']:.1f} s; rendering {part['render']:.2f} s; "
              f"real tokens {part['real'] / part['padded']:.0%} of padded positions")
        print("    one training step, self CPU time: " + ", ".join(f"{k} {v:.0%}" for k, v in part["ops"].items()))
    parts = {name: cell_seconds(part, epochs) for name, part in (("old", old), ("new", new))}
    parts["new"]["probe set-up (θf)"] = 0.0  # cached: paid by the first cell of each monitor draw only
    for name in ("old", "new"):
        total = sum(parts[name].values())
        print(f"  {name} cell retraining, modelled: {total:.0f} s = " + ", ".join(
            f"{k} {v:.0f} s ({v / total:.0%})" for k, v in parts[name].items()))
    print(f"  recorded retraining per cell (old path, shared machine): {recorded:.0f} s")
    for key in ("forward", "backward", "optimizer"):
        print(f"{key} per batch, old / new: {old['per_batch'][key] / new['per_batch'][key]:.2f}x")
    print(f"monitor probe pass, old / new: {old['probe'] / new['probe']:.2f}x")
    print(f"padded positions per epoch, old / new: {old['padded'] / new['padded']:.2f}x")
    print(f"cell retraining (modelled), old / new: {sum(parts['old'].values()) / sum(parts['new'].values()):.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
