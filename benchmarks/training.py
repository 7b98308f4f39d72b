"""Training speed on SmolLM2-135M: examples/s of ``train_model`` at batch 16 and 64 tokens.

Runs the real training loop (Accelerate, AdamW, loss on the label tokens of AG News prompts cut to
exactly 64 tokens) for ``--batches`` batches with LoRA r = 16 on every projection plus the head
(the default recipe), then the same batches with full finetuning, side by side in one process.
Speed is ``examples_seen / train_seconds`` from the training history (model loading, data
rendering and saving excluded). Prints ``<what> / <what>: 1.23x`` lines.
Run: ``python benchmarks/training.py [--threads 1] [--batches 3]`` (about 3 minutes on one core).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from lm_eval_approx.recipe import TrainingRecipe
from lm_eval_approx.selection_file import SelectedExample
from lm_eval_approx.task_specs import AGNEWS
from lm_eval_approx.training import train_model

BASE = "smollm2-135m"
BATCH = 16
TOKENS = 64
LORA_RANK = 16
# 80 words always tokenise to more than 64 tokens, so every example is cut to exactly 64.
FILLER = ("Officials said on Monday that the talks between the two countries would resume next week "
          "after markets rallied and the team announced a new chip for scientific computing ") * 2


def examples(n: int) -> list[SelectedExample]:
    return [SelectedExample(id=str(i), text=f"{i} {FILLER}", label=i % AGNEWS.num_classes) for i in range(n)]


def speed(method: str, rows: list[SelectedExample]) -> float:
    recipe = TrainingRecipe(method=method, lora_rank=LORA_RANK, batch_size=BATCH, max_length=TOKENS,
                            epochs=1, validation_fraction=0.0)
    with tempfile.TemporaryDirectory() as work:
        history = train_model(BASE, AGNEWS, rows, recipe, work, progress=False).history
    return history["examples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batches", type=int, default=3, help="training batches per method")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = examples(BATCH * args.batches)
    lora = speed("lora", rows)
    full = speed("full", rows)
    print(f"SmolLM2-135M, batch {BATCH}, {TOKENS} tokens, {args.threads} CPU thread(s), {args.batches} batches")
    print(f"training examples/s, LoRA r={LORA_RANK} (all projections + head): {lora:.2f}")
    print(f"training examples/s, full finetuning: {full:.2f}")
    print(f"LoRA r={LORA_RANK} / full finetuning (examples/s): {lora / full:.2f}x")


if __name__ == "__main__":
    main()
