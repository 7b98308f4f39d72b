"""Pseudo-labels: packed rows against carrier rows on SmolLM2, side by side in one run.

Candidates are real seed-corpus texts (WikiText-2 + DBpedia, the AG News protocol's pool) labelled
for two tasks: ``approx_agnews`` (three one-token choices and the three-token " Sci/Tech": carrier
rows need two forwards of each context, packing one) and ``approx_dbpedia14`` (14 names, most of
them several tokens: carrier rows need about a dozen forwards, packing one). Both paths score the
same encodings with the same weights; the ratio is of CPU seconds at one thread, so other jobs on
a shared machine do not skew it. Prints ``<task> pseudo-labels packed / carrier rows: N.NNx`` and
exits non-zero if any log-prob differs by more than 1e-3 or any label differs.

    python benchmarks/labels.py [--docs 64] [--batch-size 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODEL = "smollm2-135m"
ATOL = 1e-3
DBPEDIA_TASKS = Path(__file__).resolve().parent.parent / "examples" / "tasks" / "dbpedia"
TASKS = (("approx_agnews", None), ("approx_dbpedia14", str(DBPEDIA_TASKS)))


def timed(fn):
    began = time.process_time()
    out = fn()
    return out, time.process_time() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.features.encoding import encode_classification
    from lm_eval_approx.features.pseudo_labels import _choice_logprobs, _packed_choice_logprobs
    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

    model, tokenizer = load_model(MODEL).eval(), load_tokenizer(MODEL)
    texts = load_corpus("seed:wikitext2+seed:dbpedia", limit=args.docs, seed=0).texts
    ok = True
    for name, include in TASKS:
        spec = get_task_spec(name, include_path=include)
        per_text = [[encode_classification(tokenizer, spec, t, c, 128) for c in range(spec.num_classes)] for t in texts]
        carrier, carrier_s = timed(lambda: _choice_logprobs(model, tokenizer, per_text, args.batch_size))
        packed, packed_s = timed(lambda: _packed_choice_logprobs(model, tokenizer, per_text, args.batch_size, 128))
        worst = float(np.max(np.abs(packed - carrier)))
        same = bool((packed.argmax(1) == carrier.argmax(1)).all())
        print(f"{name}: {len(texts)} documents, {spec.num_classes} choices; CPU carrier rows {carrier_s:.1f}s, "
              f"packed {packed_s:.1f}s; max |packed - carrier| log-prob {worst:.2e}; labels identical: {same}")
        print(f"{name} pseudo-labels packed / carrier rows: {carrier_s / packed_s:.2f}x", flush=True)
        ok = ok and worst <= ATOL and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
