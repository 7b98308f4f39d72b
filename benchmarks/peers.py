"""Projected per-example gradient features, ours next to EleutherAI's bergson, side by side in one run.

Both compute, for each text, the gradient of its mean token NLL with respect to every decoder linear
layer of SmolLM2-135M (the real weights; the 210 q/k/v/o/gate/up/down projections, not the head),
projected per layer by a Kronecker (two-sided) Rademacher JL map, on the same token ids in the same
batches, in float32 on this CPU:

- ours: ``layer_factors`` (one forward + one backward, weights frozen) and the ``kronecker``
  projector over those layers, as ``lm-eval-approx features`` with ``params=changed`` runs them
  (``features/build.py``), rows written into an in-memory array;
- bergson (``--peer-python``, a separate venv with ``bergson``): its ``InMemoryCollector`` under a
  ``CollectorComputer`` (the collector ``bergson build`` runs, without writing to disk) with
  ``projection_dim=p`` (a p×p block per layer), ``loss_reduction="mean"`` (its default sums token
  losses), no normalizer, no preconditioner, no unit normalisation. As bergson sets it up
  (``setup_model_and_peft``) the input embedding requires grad, so its backward also forms the
  gradient of that (tied: head) weight, one head-sized product per batch that ours skips; and its
  venv may carry another torch build than ours (both versions are printed).

Dimensions match block for block: ours gets ``dim = 210·p²``, which it splits into one p×p block
per layer, the shape bergson gives each layer. Texts: the first ``--texts`` texts of
``seed/wikitext2.jsonl``, encoded by the project's language-modelling rule (``approx_msmarco``: the
prefix token, then the text's tokens) and cut to ``--tokens`` tokens; each text's loss is the mean
NLL of its kept tokens. Batches: ``--batch-size`` texts, length-sorted, identical for both.

Each side runs in its own subprocess: the parent polls its resident memory with psutil (peak RSS,
and the growth over the RSS after loading the model), and the child times the feature loop after
one untimed warm-up batch. ``--rounds`` > 1 alternates the two sides and keeps each side's best
throughput (the least disturbed by other load on a shared machine). Then the equivalence check:
for the first ``--check-examples`` texts and three layers, the unprojected per-example gradient of
ours (the factors' ``.gradient()``), of bergson (``projection_dim=0``) and of plain torch autograd
on the same loss are compared by cosine and norm ratio, the per-text losses of both runs are
compared, and the projected ‖g‖² of both on the warm-up batch are divided by the exact ‖g‖².

    python benchmarks/peers.py                    # 64 texts: 6 minutes on two busy shared cores
    python benchmarks/peers.py --texts 2000       # the full measurement: ~2.5 hours there

At batch 16 × 129 tokens each side peaked at about 7 GiB RSS, most of it what one batch's forward
and backward hold; ``--batch-size`` lowers it. Needs ``LM_EVAL_APPROX_DATA`` (the texts),
the converted SmolLM2 (``smollm2-135m``) and a venv with ``pip install bergson`` (``--peer-python``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = "smollm2-135m"
TASK = "approx_msmarco"
TEXTS_FILE = "seed/wikitext2.jsonl"
PEER_PYTHON = "/work/peer-venv/bin/python"
MIB = 2 ** 20
POLL_SECONDS = 0.05
RESULT_PREFIX = "RESULT "
JOB_FILE = "job.json"


# --- children (each runs in its own process; the bergson one in the peer venv, without our package) ---


def _save(work: Path, side: str, **arrays) -> None:
    import numpy as np

    np.savez(work / f"{side}.npz", **arrays)


def check_names(names: list[str]) -> list[str]:
    """The layers of the equivalence check: the first, middle and last of the parameter set."""
    return [names[0], names[len(names) // 2], names[-1]]


def child_ours(work: Path, job: dict, check: bool) -> dict:
    import numpy as np
    import psutil
    import torch

    from lm_eval_approx.features.encoding import Encoded, collate
    from lm_eval_approx.features.gradients import layer_factors, total_sqnorm
    from lm_eval_approx.features.projection import make_projector
    from lm_eval_approx.models.layers import head_name, layer_shape, linear_modules
    from lm_eval_approx.models.loading import load_model

    torch.set_num_threads(job["threads"])
    model = load_model(job["model"], "float32", "cpu")
    rss_loaded = psutil.Process().memory_info().rss
    modules = linear_modules(model)
    head = head_name(model)
    names = [n for n in modules if n != head]
    p = job["p"]
    projector = make_projector("kronecker", {n: layer_shape(modules[n]) for n in names}, len(names) * p * p)
    # bergson names layers relative to the decoder (model.base_model), ours relative to the causal LM.
    prefix = model.base_model_prefix + "."
    peer_names = [n.removeprefix(prefix) for n in names]
    encoded = [Encoded(ids, 1, 1.0 / (len(ids) - 1)) for ids in job["ids"]]
    pad = job["pad_id"]

    def batch_of(rows):
        return collate([encoded[i] for i in rows], pad)

    features = np.zeros((len(encoded), projector.dim), dtype=np.float32)
    losses = np.zeros(len(encoded), dtype=np.float32)
    warm = job["batches"][0]
    loss, factors = layer_factors(model, batch_of(warm), names)
    exact = total_sqnorm(factors).numpy()
    projector.project(factors)
    del factors
    start = time.perf_counter()
    for rows in job["batches"]:
        loss, factors = layer_factors(model, batch_of(rows), names)
        with torch.no_grad():
            features[rows] = projector.project(factors).numpy()
        losses[rows] = loss.numpy()
        del factors
    seconds = time.perf_counter() - start
    arrays = {"losses": losses, "sqnorm": (features.astype(np.float64) ** 2).sum(axis=1),
              "warm_rows": np.asarray(warm), "warm_exact": exact}
    if check:
        chosen = check_names(names)
        _, factors = layer_factors(model, batch_of(range(job["check_examples"])), chosen)
        for name in chosen:
            arrays["grad:" + name.removeprefix(prefix)] = factors[name].gradient().reshape(
                job["check_examples"], -1).numpy()
    _save(work, "ours", **arrays)
    return {"seconds": seconds, "rss_loaded": rss_loaded, "dim": projector.dim, "layers": peer_names,
            "torch": torch.__version__}


def child_bergson(work: Path, job: dict, check: bool) -> dict:
    import dataclasses

    import numpy as np
    import psutil
    import torch
    from datasets import Dataset

    import bergson
    from bergson import CollectorComputer, GradientProcessor, IndexConfig, InMemoryCollector
    from bergson.utils.worker_utils import processor_for, setup_model_and_peft

    torch.set_num_threads(job["threads"])
    cfg = IndexConfig(run_path=str(work / "bergson-index"), model=job["model_path"], precision="fp32",
                      projection_dim=job["p"], loss_reduction="mean", overwrite=True)
    cfg.partial_run_path.mkdir(parents=True, exist_ok=True)
    model, _ = setup_model_and_peft(cfg)
    rss_loaded = psutil.Process().memory_info().rss
    processor = processor_for(cfg)
    data = Dataset.from_dict({"input_ids": job["ids"], "length": [len(ids) for ids in job["ids"]]})
    warm = job["batches"][0]

    def collect(rows, batches, proc, run_cfg=cfg, targets=None):
        subset = data if rows is None else data.select(rows)
        collector = InMemoryCollector(model=model.base_model, processor=proc, data=subset, cfg=run_cfg,
                                      target_modules=targets)
        CollectorComputer(model, subset, collector=collector, batches=batches, cfg=run_cfg).run_with_collector_hooks(
            desc="bergson")
        return collector

    # The warm-up batch also builds the projection matrices, which the processor caches (as ours does).
    warmed = collect(warm, [list(range(len(warm)))], processor)
    warm_grads = torch.cat([warmed.gradients[n] for n in warmed.shapes()], dim=1).double()
    del warmed
    start = time.perf_counter()
    collector = collect(None, job["batches"], processor)
    seconds = time.perf_counter() - start
    layers = list(collector.shapes())
    grads = collector.gradients
    sqnorm = sum(g.double().pow(2).sum(dim=1) for g in grads.values()).numpy()
    arrays = {"losses": collector.per_doc_losses.numpy(), "sqnorm": sqnorm,
              "warm_sqnorm": warm_grads.pow(2).sum(dim=1).numpy()}
    dim = sum(g.shape[1] for g in grads.values())
    del collector, grads
    if check:
        chosen = check_names(layers)
        exact_cfg = dataclasses.replace(cfg, projection_dim=0)
        k = job["check_examples"]
        checked = collect(list(range(k)), [list(range(k))], processor_for(exact_cfg), exact_cfg, set(chosen))
        arrays.update({"grad:" + name: checked.gradients[name].numpy() for name in chosen})
    _save(work, "bergson", **arrays)
    return {"seconds": seconds, "rss_loaded": rss_loaded, "dim": dim, "layers": layers,
            "torch": torch.__version__, "bergson": bergson.__version__}


# --- parent ---


def prepare(work: Path, args) -> dict:
    """Encode the texts once, by our rule, and fix the batches both sides run."""
    from lm_eval_approx.data.mirror import mirror_file, mirror_missing
    from lm_eval_approx.features.encoding import encode_lm
    from lm_eval_approx.models.loading import load_tokenizer, resolve_model
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

    spec = get_task_spec(TASK)
    tokenizer = load_tokenizer(args.model)
    path = mirror_file(TEXTS_FILE)
    if path is None:
        raise mirror_missing(TEXTS_FILE)
    with open(path) as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(args.texts), f)]
    # The first rolling window at max_length = tokens + 1 is the prefix token and the text's first
    # `tokens` tokens; the loss is the mean over the kept tokens (child_ours reweights 1/n).
    ids = [encode_lm(tokenizer, spec, text, args.tokens + 1)[0].ids for text in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [order[lo : lo + args.batch_size] for lo in range(0, len(order), args.batch_size)]
    job = {"model": args.model, "model_path": resolve_model(args.model), "ids": ids, "batches": batches,
           "pad_id": tokenizer.pad_token_id, "p": args.p, "threads": args.threads,
           "check_examples": args.check_examples}
    (work / JOB_FILE).write_text(json.dumps(job))
    return job


def measure(side: str, python: str, work: Path, check: bool) -> dict:
    """Run one side's child, polling its RSS; returns its result plus ``peak_rss``."""
    import psutil

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    cmd = [python, __file__, "--child", side, "--work", str(work)] + (["--check"] if check else [])
    log = work / f"{side}.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        watched, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(POLL_SECONDS)
        out = proc.stdout.read()
    if proc.wait() != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{side} run failed with exit code {proc.returncode}:\n{tail}")
    line = next(line for line in out.splitlines() if line.startswith(RESULT_PREFIX))
    return {**json.loads(line[len(RESULT_PREFIX):]), "peak_rss": peak}


def autograd_gradients(job: dict, names: list[str]) -> dict:
    """The oracle: plain torch autograd of each text's mean token NLL, per layer (bergson names)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(job["model_path"], dtype=torch.float32).eval()
    weights = [model.base_model.get_submodule(n).weight for n in names]
    out = {n: [] for n in names}
    for ids in job["ids"][: job["check_examples"]]:
        x = torch.tensor([ids])
        loss = F.cross_entropy(model(input_ids=x).logits[0, :-1].float(), x[0, 1:])
        for name, grad in zip(names, torch.autograd.grad(loss, weights)):
            out[name].append(grad.reshape(-1))
    return {n: torch.stack(g).double() for n, g in out.items()}


def equivalence(work: Path, job: dict) -> None:
    import numpy as np
    import torch

    ours, peer = np.load(work / "ours.npz"), np.load(work / "bergson.npz")
    names = [key.removeprefix("grad:") for key in ours.files if key.startswith("grad:")]
    oracle = autograd_gradients(job, names)

    def cos(a, b):
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    worst = {"ours vs bergson": 1.0, "ours vs autograd": 1.0, "bergson vs autograd": 1.0}
    print(f"\nUnprojected per-example gradients, first {job['check_examples']} texts "
          "(cosine; norm ratio ours / bergson):")
    for name in names:
        a = torch.from_numpy(ours["grad:" + name]).double()
        b = torch.from_numpy(peer["grad:" + name]).double()
        for i in range(job["check_examples"]):
            pairs = {"ours vs bergson": (a[i], b[i]), "ours vs autograd": (a[i], oracle[name][i]),
                     "bergson vs autograd": (b[i], oracle[name][i])}
            values = {key: cos(*pair) for key, pair in pairs.items()}
            for key, value in values.items():
                worst[key] = min(worst[key], value)
            print(f"  text {i} {name}: " + ", ".join(f"{k} {v:.6f}" for k, v in values.items())
                  + f", norm ratio {float(a[i].norm() / b[i].norm()):.6f}")
    for key, value in worst.items():
        print(f"gradient cosine {key} (min over texts and layers): {value:.6f}")
    gap = np.abs(ours["losses"].astype(np.float64) - peer["losses"]).max()
    print(f"per-text loss, max |ours − bergson| over {len(ours['losses'])} texts: {gap:.2e} "
          f"(mean loss {ours['losses'].mean():.4f})")
    rows = ours["warm_rows"]
    exact = ours["warm_exact"].astype(np.float64)
    print(f"projected ‖g‖² / exact ‖g‖², mean over the {len(rows)} warm-up texts: "
          f"ours {np.mean(ours['sqnorm'][rows] / exact):.3f}, bergson {np.mean(peer['warm_sqnorm'] / exact):.3f} "
          "(JL: 1 in expectation)")


def report(job: dict, results: dict, rounds: int) -> None:
    n = len(job["ids"])
    best = {side: min(runs, key=lambda r: r["seconds"]) for side, runs in results.items()}
    peak = {side: max(r["peak_rss"] for r in runs) for side, runs in results.items()}
    rate = {side: n / best[side]["seconds"] for side in results}
    ours, peer = best["ours"], best["bergson"]
    if ours["layers"] != peer["layers"]:
        raise SystemExit(f"the two sides project different layers: {ours['layers'][:3]}… vs {peer['layers'][:3]}…")
    tokens = sum(len(ids) - 1 for ids in job["ids"])
    print(f"\nSmolLM2-135M ({job['model_path']}), float32 CPU, {job['threads']} torch thread(s); {n} texts of "
          f"{TEXTS_FILE} cut to ≤ {max(len(i) for i in job['ids']) - 1} tokens ({tokens} loss tokens), batches "
          f"of {len(job['batches'][0])} sorted by length; {rounds} round(s), best shown")
    print(f"layers: {len(ours['layers'])} decoder linear layers (head excluded); projection p×p = "
          f"{job['p']}×{job['p']} per layer: bergson projection_dim={job['p']} → {peer['dim']} dims, "
          f"ours kronecker dim={len(ours['layers'])}·{job['p']}² → {ours['dim']} dims")
    print(f"torch: ours {ours['torch']}, bergson {peer['torch']} (bergson {peer['bergson']})")
    print("| side | examples/s | seconds | peak RSS MiB | RSS after loading MiB | growth MiB |")
    print("|---|---|---|---|---|---|")
    for side in ("ours", "bergson"):
        r = best[side]
        print(f"| {side} | {rate[side]:.2f} | {r['seconds']:.1f} | {peak[side] / MIB:.0f} | "
              f"{r['rss_loaded'] / MIB:.0f} | {(peak[side] - r['rss_loaded']) / MIB:.0f} |")
    print(f"gradient features, ours / bergson throughput: {rate['ours'] / rate['bergson']:.2f}x")
    print(f"gradient features, ours / bergson peak memory: {peak['ours'] / peak['bergson']:.2f}x")
    growth = (peak["ours"] - ours["rss_loaded"]) / (peak["bergson"] - peer["rss_loaded"])
    print(f"gradient features, ours / bergson memory growth after loading: {growth:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=64, help="first N texts of seed/wikitext2.jsonl")
    parser.add_argument("--tokens", type=int, default=128, help="tokens kept per text")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per batch (both sides)")
    parser.add_argument("--p", type=int, default=16, help="bergson projection_dim: a p×p block per layer")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (both sides)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs per side; best throughput kept")
    parser.add_argument("--check-examples", type=int, default=2, help="texts of the unprojected gradient check")
    parser.add_argument("--model", default=BASE, help="a model our loader resolves to a local HF folder")
    parser.add_argument("--peer-python", default=PEER_PYTHON, help="python of the venv that has bergson")
    parser.add_argument("--child", choices=("ours", "bergson"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work = Path(args.work)
        job = json.loads((work / JOB_FILE).read_text())
        result = (child_ours if args.child == "ours" else child_bergson)(work, job, args.check)
        print(RESULT_PREFIX + json.dumps(result))
        return
    if not Path(args.peer_python).is_file():
        raise SystemExit(f"no python at --peer-python {args.peer_python} (a venv with `pip install bergson`)")
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        work = Path(tmp)
        job = prepare(work, args)
        pythons = {"ours": sys.executable, "bergson": args.peer_python}
        results = {"ours": [], "bergson": []}
        for r in range(args.rounds):
            for side, python in pythons.items():
                results[side].append(measure(side, python, work, check=r == 0))
        report(job, results, args.rounds)
        equivalence(work, job)


if __name__ == "__main__":
    main()
