"""One training epoch with LoRA on the top 2 of SmolLM2-135M's 30 blocks: the full forward against
the frozen-prefix cache (``prefix_cache: true``, ``training/prefix_cache.py``), side by side.

    python benchmarks/prefix_cache.py [--batches 4] [--threads 1] [--rounds 2]

The model has SmolLM2-135M's config and tokenizer with random weights (what is timed does not depend
on the weights), the data ``--batches`` batches of 16 AG News training documents (at most 128
tokens), the recipe the default one with ``lora_layers: 2`` and no validation share. Each round
trains one epoch without the cache, then one with it, in this process; the fastest round of each is
kept. Speed is the history's ``train_seconds`` (the epoch's batches: forward, backward, optimizer).
The cache's one-off cost (every example's states, computed once per run before the first epoch) is
printed beside it, with the whole-training ratio it leaves for the retraining rule's cap of 8 epochs.
Prints ``training epoch, full / prefix cache (lora_layers=2 of 30): N.NNx``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

BASE = "smollm2-135m"
TASK = "approx_agnews"
BATCH = 16
LORA_LAYERS = 2
RULE_EPOCHS = 8


def random_smollm2(folder: Path) -> str:
    """SmolLM2-135M's config and tokenizer with seeded random weights, saved to ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lm_eval_approx.models.loading import load_tokenizer, resolve_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(BASE)))
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(BASE).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4, help="batches of 16 per epoch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=2, help="epochs of each path; the fastest counts")
    args = parser.parse_args()

    import torch

    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training.examples import task_examples
    from lm_eval_approx.training.history import PREFIX_PHASE
    from lm_eval_approx.training.loop import train_model
    from lm_eval_approx.training.recipe import TrainingRecipe

    torch.set_num_threads(args.threads)
    spec = get_task_spec(TASK)
    rows = task_examples(spec, args.batches * BATCH, 0)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    prefix_seconds = []
    with tempfile.TemporaryDirectory() as work:
        base = random_smollm2(Path(work) / "model")
        for round_ in range(args.rounds):
            for cached in (False, True):
                recipe = TrainingRecipe(lora_layers=LORA_LAYERS, prefix_cache=cached, epochs=1, batch_size=BATCH,
                                        validation_fraction=0.0)
                history = train_model(base, spec, rows, recipe, Path(work) / f"w{round_}{cached}",
                                      progress=False).history
                seconds[cached].append(history.train_seconds)
                if cached:
                    prefix_seconds.append(history.phase_seconds[PREFIX_PHASE])
    full, cached = min(seconds[False]), min(seconds[True])
    once = min(prefix_seconds)
    print(f"{len(rows)} AG News documents, {args.batches} batches of {BATCH}, {args.threads} thread(s), "
          f"precision {recipe.mixed_precision}; epoch seconds full {seconds[False]}, cached {seconds[True]}")
    print(f"training epoch, full / prefix cache (lora_layers={LORA_LAYERS} of 30): {full / cached:.2f}x")
    print(f"prefix states, once per run: {once:.1f} s ({once / full:.2f} of a full epoch); "
          f"{RULE_EPOCHS}-epoch training, full / prefix cache: {RULE_EPOCHS * full / (once + RULE_EPOCHS * cached):.2f}x")


if __name__ == "__main__":
    main()
