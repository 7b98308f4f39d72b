"""HFLM vs FastHFLM on SmolLM2, side by side in one run: wall time and agreement of the scores.

Two 4-choice tasks over AG News test documents, rendered with the approx_agnews template:
``approx_agnews`` (" World", " Sports", " Business" one token each, " Sci/Tech" three; goal
>= 1.7x, about 2x is the limit) and ``approx_agnews_descriptive`` (multi-token labels; goal >= 3x).
Both models share one set of weights; the speedup is the ratio of CPU seconds (one thread by
default, so other jobs on a shared machine do not skew it; the wall-time ratio is printed too). Prints ``<task> FastHFLM / HFLM speedup: 1.85x`` and exits
non-zero if any loglikelihood differs by more than 1e-4 or any is_greedy flag or acc differs.

    python benchmarks/scoring.py [--docs 200] [--descriptive-docs 100] [--batch-size 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402

MODEL = "smollm2-135m"
ATOL = 1e-4
DESCRIPTIVE_CHOICES = ("World news", "Sports news", "Business and finance", "Science and technology")
DEFAULT_DOCS = 200
DEFAULT_DESCRIPTIVE_DOCS = 100
DEFAULT_BATCH_SIZE = 16
DEFAULT_THREADS = 1


def agnews_docs(limit: int) -> list[dict]:
    """The first ``limit`` AG News test documents of the data mirror (LM_EVAL_APPROX_DATA, or the
    shared mirror next to the checkout)."""
    from lm_eval_approx.errors import DataNotFoundError
    from lm_eval_approx.data.mirror import DATA_ENV, data_dir

    mirror = data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data"
    path = mirror / "ag_news" / "test.jsonl"
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist: set {DATA_ENV} to the data mirror")
    with path.open() as handle:
        return [json.loads(line) for _, line in zip(range(limit), handle)]


def requests_for(docs: list[dict], continuations: list[str]):
    from lm_eval.api.instance import Instance
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    AGNEWS = get_task_spec("approx_agnews")

    pairs = [(AGNEWS.context(doc["text"]), cont) for doc in docs for cont in continuations]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def accuracy(scores, docs, choices: int) -> float:
    picks = [max(range(choices), key=lambda k: scores[i * choices + k][0]) for i in range(len(docs))]
    return sum(pick == doc["label"] for pick, doc in zip(picks, docs)) / len(docs)


def timed(lm, requests):
    """Scores plus (CPU seconds of this process, wall seconds); CPU time is the measure that
    survives a machine shared with other jobs."""
    cpu, wall = time.process_time(), time.perf_counter()
    scores = lm.loglikelihood(requests, disable_tqdm=True)
    return scores, (time.process_time() - cpu, time.perf_counter() - wall)


def compare(name: str, reference, fast, docs: list[dict], continuations: list[str]) -> bool:
    """Score one task with both models; print the speedup and agreement; True when they agree."""
    requests = requests_for(docs, continuations)
    expected, (hflm_s, hflm_wall) = timed(reference, requests)
    got, (fast_s, fast_wall) = timed(fast, requests)
    worst = max(abs(a[0] - b[0]) for a, b in zip(expected, got, strict=True))
    greedy_same = all(a[1] == b[1] for a, b in zip(expected, got, strict=True))
    acc_ref, acc_fast = accuracy(expected, docs, len(continuations)), accuracy(got, docs, len(continuations))
    print(f"{name}: {len(docs)} documents, {len(requests)} requests; CPU HFLM {hflm_s:.1f}s, FastHFLM "
          f"{fast_s:.1f}s; wall HFLM {hflm_wall:.1f}s, FastHFLM {fast_wall:.1f}s")
    print(f"{name} max |FastHFLM - HFLM| loglikelihood: {worst:.2e}; is_greedy identical: {greedy_same}")
    print(f"{name} acc HFLM {acc_ref:.3f}, FastHFLM {acc_fast:.3f}")
    print(f"{name} FastHFLM / HFLM wall-time speedup: {hflm_wall / fast_wall:.2f}x")
    print(f"{name} FastHFLM / HFLM speedup: {hflm_s / fast_s:.2f}x", flush=True)
    return worst <= ATOL and greedy_same and acc_ref == acc_fast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="documents for approx_agnews")
    parser.add_argument("--descriptive-docs", type=int, default=DEFAULT_DESCRIPTIVE_DOCS,
                        help="documents for the multi-token variant")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per forward (both)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM
    from lm_eval_approx.models.loading import resolve_model
    from lm_eval_approx.harness.fast_hflm import FastHFLM
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    AGNEWS = get_task_spec("approx_agnews")

    reference = HFLM(pretrained=resolve_model(MODEL), device="cpu", batch_size=args.batch_size, dtype="float32")
    fast = FastHFLM(pretrained=reference.model, tokenizer=reference.tokenizer, device="cpu",
                    batch_size=args.batch_size)
    descriptive = [AGNEWS.target_delimiter + choice for choice in DESCRIPTIVE_CHOICES]
    agree = compare("approx_agnews", reference, fast, agnews_docs(args.docs), AGNEWS.continuations())
    agree &= compare("approx_agnews_descriptive", reference, fast, agnews_docs(args.descriptive_docs), descriptive)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
