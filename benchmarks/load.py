"""Peak memory of corpus load → pseudo-labels → feature store, at 20k and 200k short documents.

A tiny random GPT-2 pair (θ0, θf: two seeds) and a BPE tokenizer are built in a temp folder with a
local JSONL corpus of N documents of 10–40 random words. Each N runs in a fresh subprocess on one
thread (so its peak RSS is its own): ``load_corpus`` → ``pseudo_label`` (θf) →
``build_feature_store`` (``head`` features; ``changed`` too at the sizes of ``--changed-at``). The
store is memory-mapped, so every page of it that was written counts in RSS; what is left above the
store's bytes is the pipeline's own memory, which must not grow with N:

    peak RSS above store, 200k / 20k: 1.05x

The child also reports the RSS that ``load_corpus`` adds (its lists of ids, texts, labels and sources,
plus what its dedup pass leaves in the allocator), which grows with N by design.

    python benchmarks/load.py [--sizes 20000,200000] [--dim 1024] [--changed-at 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a of to in and for on with at by from as is was are be has have will new world "
         "sports business science technology market stocks shares bank rates team game season win "
         "match final player coach league cup leaders talks peace treaty government minister election "
         "vote war troops oil prices growth profit quarter company chip computer software internet "
         "space planet research study report police court city country year week day people said "
         "after before over under two three first last more most high low big small open close").split()
LABEL_TEXT = "Article: news\nTopic: World Sports Business Sci/Tech"
MIN_WORDS, MAX_WORDS = 10, 40
VOCAB_SIZE = 512
HIDDEN, INNER, LAYERS, HEADS, POSITIONS = 32, 64, 2, 2, 128
ACTIVATION = "relu"
MAX_LENGTH = 64
TOKENIZER_SAMPLE = 2000
KIB, MIB = 1024, 1024 * 1024
DEFAULT_SIZES = "20000,200000"


def _tokenizer(sample: list[str]):
    """A byte-level BPE trained on a sample of the corpus and the task's verbalisers (pad = eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample + [LABEL_TEXT] * 8, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def _save_model(path: Path, tokenizer, seed: int) -> str:
    """A tiny random GPT-2 (tied head of vocab × HIDDEN) with its tokenizer, saved as safetensors."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=POSITIONS, n_embd=HIDDEN, n_inner=INNER,
                        n_layer=LAYERS, n_head=HEADS, activation_function=ACTIVATION, tie_word_embeddings=True,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def _document(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS)))


def write_corpus(path: Path, n: int, seed: int) -> None:
    """N documents of random words, one JSON object per line (streamed: the parent stays small)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            fh.write(json.dumps({"text": _document(rng)}) + "\n")


def _status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def child(args) -> None:
    """One measured run; prints one JSON line of counts."""
    import torch

    torch.set_num_threads(1)
    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.features.config import FeatureConfig
    from lm_eval_approx.features.build import build_feature_store
    from lm_eval_approx.features.pseudo_labels import pseudo_label
    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    AGNEWS = get_task_spec("approx_agnews")

    work = Path(args.work)
    base, tuned = str(work / "theta0"), str(work / "thetaf")
    model_f, tokenizer = load_model(tuned), load_tokenizer(base)
    ready = _status_kib("VmRSS")
    start = time.perf_counter()
    corpus = load_corpus(str(work / f"corpus-{args.n}.jsonl"))
    loaded = _status_kib("VmRSS")
    t_corpus = time.perf_counter()
    labels = pseudo_label(model_f, tokenizer, AGNEWS, corpus.texts, args.batch_size, MAX_LENGTH).labels
    t_labels = time.perf_counter()
    config = FeatureConfig(base=base, finetuned=tuned, task=AGNEWS.name, params=args.params, dim=args.dim,
                           batch_size=args.batch_size, max_length=MAX_LENGTH)
    out = work / f"store-{args.params}-{args.n}"
    store = build_feature_store(config, corpus, labels, out)
    t_store = time.perf_counter()
    result = {
        "n": len(corpus), "params": args.params, "dim": store.dim, "ready_kib": ready,
        "corpus_kib": loaded - ready, "peak_kib": _status_kib("VmHWM"),
        "features_bytes": len(store) * store.dim * store.features.itemsize, "store_bytes": _folder_bytes(out),
        "seconds": {"corpus": t_corpus - start, "labels": t_labels - t_corpus, "features": t_store - t_labels},
    }
    print(json.dumps(result))


def _run_child(work: Path, n: int, params: str, args) -> dict:
    command = [sys.executable, __file__, "--child", "--work", str(work), "--n", str(n), "--params", params,
               "--dim", str(args.dim), "--batch-size", str(args.batch_size)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child N={n} {params} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(r: dict) -> tuple[float, float]:
    """Print one run; returns its peak RSS above the store, without and with the corpus loader's share, MiB."""
    peak, store = r["peak_kib"] * KIB / MIB, r["store_bytes"] / MIB
    secs = r["seconds"]
    total = sum(secs.values())
    print(f"| {r['n']:,} | {r['params']} | {r['dim']} | {peak:.0f} | {store:.0f} "
          f"({r['features_bytes'] / MIB:.0f} features) | {peak - store:.0f} | {r['ready_kib'] / KIB:.0f} | "
          f"{r['corpus_kib'] / KIB:.0f} | {r['n'] / secs['labels']:.0f} | {r['n'] / secs['features']:.0f} | "
          f"{r['n'] / total:.0f} |")
    return peak - store, peak - store - r["corpus_kib"] / KIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated corpus sizes")
    parser.add_argument("--dim", type=int, default=1024, help="projected dimension d")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--changed-at", default=DEFAULT_SIZES.split(",")[0],
                        help="sizes that also run params=changed ('' for none)")
    parser.add_argument("--params", default="head", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    changed_at = {int(s) for s in args.changed_at.split(",") if s}
    with tempfile.TemporaryDirectory(prefix="lm-eval-approx-load-") as tmp:
        work = Path(tmp)
        rng = random.Random(0)
        tokenizer = _tokenizer([_document(rng) for _ in range(TOKENIZER_SAMPLE)])
        _save_model(work / "theta0", tokenizer, seed=0)
        _save_model(work / "thetaf", tokenizer, seed=1)
        print(f"tiny GPT-2: vocab {len(tokenizer)}, hidden {HIDDEN}, MLP {INNER} ({ACTIVATION}), {LAYERS} layers; "
              f"d={args.dim}, batch {args.batch_size}, max_length {MAX_LENGTH}, 1 thread; documents of "
              f"{MIN_WORDS}–{MAX_WORDS} random words")
        print("| N | params | d | peak RSS MiB | store MiB | peak − store MiB | models loaded MiB | corpus "
              "loader adds MiB | labels docs/s | features docs/s | end-to-end docs/s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        above: dict[int, tuple[float, float]] = {}
        for n in sizes:
            write_corpus(work / f"corpus-{n}.jsonl", n, seed=n)
            above[n] = _report(_run_child(work, n, "head", args))
            if n in changed_at:
                _report(_run_child(work, n, "changed", args))
            (work / f"corpus-{n}.jsonl").unlink()
        for small, large in zip(sizes, sizes[1:]):
            ratio = f"{large // 1000}k / {small // 1000}k"
            print(f"peak RSS above store, {ratio}: {above[large][0] / above[small][0]:.2f}x")
            print(f"peak RSS above store and corpus loader, {ratio}: {above[large][1] / above[small][1]:.2f}x")


if __name__ == "__main__":
    main()
