"""Training speed and memory on SmolLM2-135M: the head-at-label-positions loss against full logits.

Runs the real training loop (``train_model``: Accelerate, AdamW, loss on the label tokens of AG
News prompts cut to exactly 64 tokens) for ``--batches`` batches of 16 with LoRA r = 16 on every
projection plus the head (the default recipe), once with the new loss (output head only at the
positions that predict label tokens, ``train_loss``) and once with ``full_logits=True`` (the old
path: full-vocabulary logits at every position), and with ``--full`` also full finetuning. Each run
is a fresh subprocess, one after the other, so its peak resident memory is its own: the parent
polls the child's RSS with psutil. Speed is ``examples_seen / train_seconds`` from the training
history (model loading, data rendering and saving excluded). Prints ``<what> / <what>: 1.23x``.
Run: ``python benchmarks/training.py [--threads 2] [--batches 2] [--full]`` (about 4 minutes on two
busy shared cores; 3 batches took 6).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BASE = "smollm2-135m"
BATCH = 16
TOKENS = 64
LORA_RANK = 16
MIB = 2 ** 20
POLL_SECONDS = 0.05
RESULT_PREFIX = "RESULT "
# 80 words always tokenise to more than 64 tokens, so every example is cut to exactly 64.
FILLER = ("Officials said on Monday that the talks between the two countries would resume next week "
          "after markets rallied and the team announced a new chip for scientific computing ") * 2
# run name -> (recipe method, full_logits)
RUNS = {"new": ("lora", False), "old": ("lora", True), "full": ("full", False)}


def examples(n: int):
    from lm_eval_approx.data.selection_file import SelectedExample
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    AGNEWS = get_task_spec("approx_agnews")

    return [SelectedExample(id=str(i), text=f"{i} {FILLER}", label=i % AGNEWS.num_classes) for i in range(n)]


def child(run: str, threads: int, batches: int) -> None:
    """Train once in this process and print the speed and the RSS just before training."""
    import psutil
    import torch

    from lm_eval_approx.training.recipe import TrainingRecipe
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    AGNEWS = get_task_spec("approx_agnews")
    from lm_eval_approx.training.loop import train_model

    torch.set_num_threads(threads)
    method, full_logits = RUNS[run]
    recipe = TrainingRecipe(method=method, lora_rank=LORA_RANK, batch_size=BATCH, max_length=TOKENS,
                            epochs=1, validation_fraction=0.0)
    rows = examples(BATCH * batches)
    before = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory() as work:
        history = train_model(BASE, AGNEWS, rows, recipe, work, progress=False, full_logits=full_logits).history
    print(RESULT_PREFIX + json.dumps({"examples_per_second": history.examples_per_second, "rss_before": before}))


def measure(run: str, threads: int, batches: int) -> dict:
    """Run ``child`` in a subprocess, polling its RSS; returns its result plus ``peak_rss``."""
    import psutil

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, __file__, "--child", run, "--threads", str(threads), "--batches", str(batches)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_SECONDS)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"benchmark run {run!r} failed with exit code {proc.returncode}")
    line = next(line for line in out.splitlines() if line.startswith(RESULT_PREFIX))
    return {**json.loads(line[len(RESULT_PREFIX):]), "peak_rss": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batches", type=int, default=2, help="training batches per run")
    parser.add_argument("--full", action="store_true", help="also time full finetuning")
    parser.add_argument("--child", choices=sorted(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads, args.batches)
        return
    runs = ["new", "old"] + (["full"] if args.full else [])
    results = {run: measure(run, args.threads, args.batches) for run in runs}
    new, old = results["new"], results["old"]
    print(f"SmolLM2-135M, batch {BATCH}, {TOKENS} tokens, {args.threads} CPU thread(s), {args.batches} batches, "
          f"LoRA r={LORA_RANK} (all projections + head)")
    for run in runs:
        r = results[run]
        print(f"  {run:4s}: {r['examples_per_second']:.2f} examples/s, peak RSS {r['peak_rss'] / MIB:.0f} MiB "
              f"(+{(r['peak_rss'] - r['rss_before']) / MIB:.0f} MiB loading and training)")
    print(f"LoRA training new / old (examples/s): {new['examples_per_second'] / old['examples_per_second']:.2f}x")
    print(f"LoRA training peak RSS new / old: {new['peak_rss'] / old['peak_rss']:.2f}x")
    growth = (new["peak_rss"] - new["rss_before"]) / (old["peak_rss"] - old["rss_before"])
    print(f"LoRA training RSS growth new / old: {growth:.2f}x")
    if args.full:
        ratio = new["examples_per_second"] / results["full"]["examples_per_second"]
        print(f"LoRA r={LORA_RANK} / full finetuning (examples/s): {ratio:.2f}x")


if __name__ == "__main__":
    main()
