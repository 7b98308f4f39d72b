"""Peak memory of training at the default recipe against the memory options, side by side.

Each variant trains θ0 (default: SmolLM2-135M) for one epoch on the same N AG News-shaped examples
in its own child process, and the child's peak resident set size is read from ``os.wait4`` (the
kernel's ru_maxrss, what ``/usr/bin/time -v`` reports). The reference is ``one_pass``: batch 16 in
one forward/backward pass, the default before micro-batches. Variants: the default recipe (micro-batches
of 4: the same update, fewer live activations), micro-batches of 2, gradient checkpointing, and
default + checkpointing; and two cheaper recipes, which train a different model (not the same
gradients): LoRA on the top 4 blocks + head (``lora_layers=4``) and on the head only. Printed: each
variant's peak RSS, seconds, and its ratios to the reference, as ``<variant> / one_pass peak RSS:
0.52x`` lines. Language-modelling examples (``--task lm``, full-vocabulary logits at every
position) are the heavier case.

    python benchmarks/memory.py                       # SmolLM2-135M, 64 examples of 128 tokens
    python benchmarks/memory.py --task lm --examples 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "one_pass"
VARIANTS = {
    REFERENCE: {"micro_batch_size": 0},
    "default": {},
    "micro_batch_size=2": {"micro_batch_size": 2},
    "gradient_checkpointing": {"micro_batch_size": 0, "gradient_checkpointing": True},
    "default+checkpointing": {"gradient_checkpointing": True},
    "lora_layers=4": {"micro_batch_size": 0, "lora_layers": 4},
    "head_only": {"micro_batch_size": 0, "target_modules": ["head"]},
}
CHILD = r"""
import json, sys, tempfile, time
from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.tasks.kinds import CLASSIFICATION, LANGUAGE_MODELLING
from lm_eval_approx.tasks.template_spec import TemplateSpec
from lm_eval_approx.training.loop import train_model
from lm_eval_approx.training.recipe import TrainingRecipe

args = json.loads(sys.argv[1])
words = ("markets rallied as investors weighed the central bank outlook and the new trade figures "
         "from the capital while analysts expected further gains in technology shares ").split()
text = " ".join(words[i % len(words)] for i in range(args["words"]))
if args["task"] == "lm":
    spec = TemplateSpec(name="bench_lm", kind=LANGUAGE_MODELLING)
    rows = [SelectedExample(id=str(i), text=f"{i} {text}") for i in range(args["examples"])]
else:
    spec = TemplateSpec(name="bench_cls", kind=CLASSIFICATION, template="Article: {text}\nTopic:",
                        choices=("World", "Sports", "Business", "Sci/Tech"))
    rows = [SelectedExample(id=str(i), text=f"{i} {text}", label=i % 4) for i in range(args["examples"])]
recipe = TrainingRecipe(epochs=1, validation_fraction=0.0, max_length=args["max_length"], **args["options"])
began = time.perf_counter()
train_model(args["base"], spec, rows, recipe, tempfile.mkdtemp(), progress=False)
print(json.dumps({"seconds": time.perf_counter() - began}))
"""


def run_variant(base: str, task: str, examples: int, max_length: int, options: dict) -> dict:
    payload = json.dumps({"base": base, "task": task, "examples": examples, "max_length": max_length,
                          "words": max_length, "options": options})
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", LM_EVAL_APPROX_LOAD_PLUGINS="")
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, payload], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"variant {options} failed (status {status})")
    return {"peak_rss_gib": usage.ru_maxrss / 2**20, "wall_seconds": time.perf_counter() - began,
            "train_seconds": json.loads(out.strip().splitlines()[-1])["seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--task", choices=("classification", "lm"), default="classification")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    args = parser.parse_args(argv)
    names = [REFERENCE, *[v for v in (args.variant or VARIANTS) if v != REFERENCE]]
    results = {name: run_variant(args.base, args.task, args.examples, args.max_length, VARIANTS[name])
               for name in names}
    print(f"{args.base}, {args.task}, {args.examples} examples of {args.max_length} tokens, batch 16, 1 epoch")
    for name, r in results.items():
        print(f"  {name:34s} peak RSS {r['peak_rss_gib']:.2f} GiB, training {r['train_seconds']:.1f} s")
    ref = results[REFERENCE]
    for name, r in results.items():
        if name != REFERENCE:
            print(f"{name} / {REFERENCE} peak RSS: {r['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x")
            print(f"{name} / {REFERENCE} training time: {r['train_seconds'] / ref['train_seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
