"""One prepared check of a GPU: gradient-feature throughput against a forward, one tiny
leaderboard cell end to end, and every model-running stage of the pipeline, on the device.

    python benchmarks/gpu_check.py                        # cuda, bf16, the real configs, one cell, the stages
    python benchmarks/gpu_check.py --device cpu --small   # CPU smoke test (a minute): small configs

(a) Throughput. Random-init models of the real configs of SmolLM2-135M, GPT-2 (124M) and
Llama-3.2-1B, written below (nothing is downloaded; their parameter counts are checked against the
estimate's table, ``models/size.py``), built directly on the device in ``--dtype`` (bf16 on cuda by
default, as the gpu preset trains; fp32 on a CPU). Per model, batches of B × T tokens, documents/s
of a no-grad forward, of ``head`` features (classification: one label token, exact ‖g‖²) and of
``changed`` features (every decoder linear layer, LM loss over every token: a forward and a backward
with frozen weights, ‖g‖² projected), projected to 4,096 dimensions; one warm-up, then the best of
``--rounds`` (CUDA synchronised). Prints ``<model>: head features / forward: N.NNx`` lines (and
``changed``), and, with the real configs, the head-feature rate against the estimate's assumption
for that size and device (``leaderboard/estimate.py``): the measured ratio to put in
``DEVICE_CLASSES``.

(b) One cell. The tiny preset's ``select`` cell (k = 4 of 40 candidates, expert on 16 documents)
on a 2-layer random Llama with a tokenizer trained here, ``device`` set to the device and
``approx.extract_dtype`` to ``--dtype``, in a fresh cache: expert training, θf's labels, head
features, selection, LoRA retraining and lm-eval scoring. Data come from the mirror of
``LM_EVAL_APPROX_DATA`` when it holds the files, else from a small generated mirror (plumbing, not
accuracy, is checked). It prints the cell's score, stage seconds and peak GPU memory, and where each
``load_model`` call put its model: a cuda run whose labels or features were computed on the CPU, or
in another dtype, says so.

(c) The stages. ``run_selection`` of likelihood_ratio (θf's labels and losses, θ0's losses), select
(gradient features), rds (θf's samples, θ0's pooled states) and gen_knn (the sentence encoder) on two
random 2-layer Llamas (θ0, and θf of another seed), once on the device in ``--dtype`` and once on the
CPU in float32, each in a fresh cache. Per strategy: seconds of each run, as ``<strategy> cpu float32
/ <device> <dtype>: N.NNx``; how far the device's labels and losses are from the CPU's; the picks both
made; and every model load that did not land on the device in the dtype (a NOTE).

Exit status 0 when every part ran; 2 when ``--device cuda`` is asked for on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

DIM = 4096
# The published configs (config.json of each hub repository), tied embeddings as released.
REAL_CONFIGS = {
    "SmolLM2-135M": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                   rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)),
    "GPT-2": ("gpt2", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                           tie_word_embeddings=True)),
    "Llama-3.2-1B": ("llama", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                   max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                                   tie_word_embeddings=True,
                                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
}
HUB_IDS = {"SmolLM2-135M": "smollm2-135m", "GPT-2": "openai-community/gpt2", "Llama-3.2-1B": "meta-llama/Llama-3.2-1B"}
# --small: the same families shrunk to 2 blocks and small widths, for a CPU smoke test in seconds.
SMALL = {"SmolLM2-135M": dict(vocab_size=512, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=3, num_key_value_heads=1),
         "GPT-2": dict(vocab_size=512, n_positions=128, n_embd=48, n_layer=2, n_head=3),
         "Llama-3.2-1B": dict(vocab_size=1024, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model(name: str, small: bool, device: str, dtype: torch.dtype):
    """A random-init causal LM of ``name``'s config, allocated on ``device`` in ``dtype``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    family, values = REAL_CONFIGS[name]
    values = {**values, **(SMALL[name] if small else {})}
    config = (GPT2Config if family == "gpt2" else LlamaConfig)(**values)
    torch.manual_seed(0)
    with torch.device(device):
        model = (GPT2LMHeadModel if family == "gpt2" else LlamaForCausalLM)(config)
    return model.to(dtype).eval()


def batches(vocab: int, rows: int, tokens: int, device: str):
    """An LM batch (loss on every next token) and a classification batch (one label token)."""
    from lm_eval_approx.features.encoding import Batch

    ids = torch.randint(1, vocab, (rows, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    lm = Batch(ids, mask, torch.arange(tokens - 1, device=device).expand(rows, -1).clone(), ids[:, 1:].clone(),
               torch.full((rows, tokens - 1), 1.0 / (tokens - 1), device=device))
    cls = Batch(ids, mask, torch.full((rows, 1), tokens - 2, device=device), ids[:, -1:].clone(),
                torch.ones(rows, 1, device=device))
    return lm, cls


def timed(fn, rounds: int, device: str) -> float:
    """Best wall seconds of ``rounds`` calls after one warm-up."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def throughput(name: str, args) -> dict[str, float]:
    """Documents/s of a forward, head features and changed features for one model."""
    from lm_eval_approx.features.gradients import head_factors, layer_factors, total_sqnorm
    from lm_eval_approx.features.projection import make_projector
    from lm_eval_approx.models.layers import head_name, layer_shape, linear_modules

    model = build_model(name, args.small, args.device, DTYPES[args.dtype])
    params = sum(p.numel() for p in model.parameters())
    lm, cls = batches(model.config.vocab_size, args.batch, args.tokens, args.device)
    head = head_name(model)
    mods = linear_modules(model)
    changed = [n for n in mods if n != head]
    head_proj = make_projector("kronecker", {head: layer_shape(mods[head])}, DIM, 0, args.device)
    changed_proj = make_projector("kronecker", {n: layer_shape(mods[n]) for n in changed}, DIM, 0, args.device)

    def forward():
        with torch.no_grad():
            model(input_ids=lm.input_ids, attention_mask=lm.attention_mask)

    def head_features():
        _, factors = head_factors(model, cls, head)
        with torch.no_grad():
            head_proj.project(factors)
            total_sqnorm(factors)

    def changed_features():
        _, factors = layer_factors(model, lm, changed)
        with torch.no_grad():
            changed_proj.project(factors).pow(2).sum(dim=1)

    rate = {key: args.batch / timed(fn, args.rounds, args.device)
            for key, fn in (("forward", forward), ("head", head_features), ("changed", changed_features))}
    rate["parameters"] = params
    return rate


def report_throughput(name: str, rate: dict[str, float], args) -> None:
    from lm_eval_approx.leaderboard.estimate import CPU_RATES, DEVICE_CLASSES, device_class, scaled_rates
    from lm_eval_approx.models.size import KNOWN_PARAMETERS, SMOLLM2_135M_PARAMETERS

    params = int(rate["parameters"])
    size = "small config" if args.small else "real config"
    print(f"\n## {name} ({size}, {params / 1e6:,.1f}M parameters, {args.dtype}, {args.device}), "
          f"batch {args.batch} x {args.tokens} tokens")
    for key in ("forward", "head", "changed"):
        print(f"{name}: {key} {rate[key]:.1f} documents/s")
    print(f"{name}: head features / forward: {rate['head'] / rate['forward']:.2f}x")
    print(f"{name}: changed features / forward: {rate['changed'] / rate['forward']:.2f}x")
    if args.small:
        return
    known = KNOWN_PARAMETERS[HUB_IDS[name]]
    print(f"{name}: parameters match the estimate's table: {params == known} ({known:,})")
    assumed = scaled_rates(params, args.device)["features_head"]
    implied = rate["head"] / (CPU_RATES["features_head"] * SMOLLM2_135M_PARAMETERS / params)
    kind = device_class(args.device)
    print(f"{name}: the estimate assumes {assumed:.1f} head-feature documents/s here; measured {rate['head']:.1f} "
          f"(an implied {implied:.0f}x the reference CPU; DEVICE_CLASSES[{args.device.split(':')[0]!r}] says "
          f"{kind.throughput:g}x{'' if args.device.split(':')[0] in DEVICE_CLASSES else ', an unknown kind'})")


CLASSES = {0: "world leaders government election treaty minister war peace capital",
           1: "sports team match season coach player goal final championship league",
           2: "business stocks market shares bank rates profit company investors",
           3: "science technology chip software computer research internet space"}


def generated_mirror(folder: Path) -> Path:
    """A small data mirror of generated texts with the files the tiny preset reads."""
    import random

    rng = random.Random(0)

    def text(words: str, n: int) -> str:
        pool = words.split() + "the a of in on and to for with new after says".split()
        return " ".join(rng.choice(pool) for _ in range(n)).capitalize() + "."

    def write(relative: str, rows: list[dict]) -> None:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    write("ag_news/train.jsonl", [{"text": text(CLASSES[i % 4], 30), "label": i % 4} for i in range(64)])
    write("ag_news/test.jsonl", [{"text": text(CLASSES[i % 4], 30), "title": "t", "label": i % 4} for i in range(32)])
    write("seed/wikitext2.jsonl", [{"text": text(CLASSES[i % 4], 60)} for i in range(40)])
    write("seed/dbpedia.jsonl", [{"text": text(CLASSES[i % 4], 40), "label": i % 14} for i in range(40)])
    return folder


def tiny_model(folder: Path, seed: int = 0) -> str:
    """A 2-layer random Llama (weights of ``seed``) and a byte-level BPE tokenizer trained here (the
    same for every seed), saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([f"Article: {words}\nTopic: World Sports Business Sci/Tech" for words in CLASSES.values()] * 4,
                            trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def record_model_loads() -> tuple[list[tuple[str, str, str]], callable]:
    """Wraps ``load_model`` where the package imported it, and the sentence encoder's loader,
    recording (caller, device, dtype) of each model they return; returns the records and a function
    that restores the originals."""
    import importlib

    from lm_eval_approx.data import similarity
    from lm_eval_approx.models import loading

    for module in ("lm_eval_approx.pipeline", "lm_eval_approx.features.build", "lm_eval_approx.features.generation",
                   "lm_eval_approx.features.pooled", "lm_eval_approx.training.model",
                   "lm_eval_approx.training.stop_signals", "lm_eval_approx.leaderboard.runner"):
        importlib.import_module(module)
    original, loads = loading.load_model, []

    def load_model(*args, **kwargs):
        model = original(*args, **kwargs)
        first = next(model.parameters())
        loads.append((sys._getframe(1).f_globals.get("__name__", "?"), str(first.device), str(first.dtype)))
        return model

    patched = [m for m in list(sys.modules.values())
               if getattr(m, "__name__", "").startswith("lm_eval_approx") and getattr(m, "load_model", None) is original]
    for module in patched:
        module.load_model = load_model
    embedder = similarity._embedder

    def sentence_embedder(*args, **kwargs):
        tokenizer, model = embedder(*args, **kwargs)
        first = next(model.parameters())
        loads.append((similarity.__name__, str(first.device), str(first.dtype)))
        return tokenizer, model

    similarity._embedder = sentence_embedder

    def restore():
        for module in patched:
            module.load_model = original
        similarity._embedder = embedder
    return loads, restore


def restoring_env(part):
    """``part(args)`` with ``LM_EVAL_APPROX_DATA`` and ``LM_EVAL_APPROX_CACHE`` put back afterwards."""
    def run(args) -> int:
        saved = {name: os.environ.get(name) for name in ("LM_EVAL_APPROX_DATA", "LM_EVAL_APPROX_CACHE")}
        try:
            return part(args)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return run


def use_mirror(root: Path) -> None:
    """``LM_EVAL_APPROX_DATA`` when it holds the tiny preset's files, else a generated mirror in ``root``."""
    mirror = os.environ.get("LM_EVAL_APPROX_DATA")
    if not (mirror and (Path(mirror) / "ag_news" / "train.jsonl").is_file()
            and (Path(mirror) / "seed" / "dbpedia.jsonl").is_file()):
        os.environ["LM_EVAL_APPROX_DATA"] = str(generated_mirror(root / "data"))
        print("\n(no data mirror at LM_EVAL_APPROX_DATA: a generated one is used)")


# Loads that are meant to be elsewhere: training places θ0 itself (its precision is the recipe's), and
# the feature stage computes the target θ0 − θf from a float32 pair on the CPU whatever the dtype
# (a bfloat16 difference of two full models rounds away small updates; features/build.py).
OWN_PLACEMENT = ("lm_eval_approx.training.",)
FLOAT32_TARGET = ("lm_eval_approx.features.build", "cpu", "torch.float32")


def misplaced(loads: list[tuple[str, str, str]], args) -> list[str]:
    """The callers whose model is not on the asked device kind in the asked dtype (and is not meant
    to be elsewhere)."""
    kind = args.device.split(":")[0]
    return [caller for caller, device, dtype in loads
            if (device.split(":")[0] != kind or dtype != str(DTYPES[args.dtype]))
            and not caller.startswith(OWN_PLACEMENT) and (caller, device, dtype) != FLOAT32_TARGET]


@restoring_env
def one_cell(args) -> int:
    """The tiny preset's select cell on the device, in a fresh cache; 0 when it wrote its results."""
    return _one_cell(args)


def _one_cell(args) -> int:
    from lm_eval_approx.cli import main as cli

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        use_mirror(root)
        os.environ["LM_EVAL_APPROX_CACHE"] = str(root / "cache")
        base = tiny_model(root / "tiny-llama")
        out = root / "out"
        loads, restore = record_model_loads()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            code = cli(["leaderboard", "--preset", "tiny", "--set", f"base={base}", "--set", f"device={args.device}",
                        "--set", f"approx.extract_dtype={args.dtype}", "--out", str(out), "--only", "select-k4-s0",
                        "--no-progress"])
        finally:
            restore()
        wall = time.perf_counter() - start
        result = out / "results" / "select-k4-s0.json"
        print(f"\n## one tiny leaderboard cell on {args.device}: exit {code}, {wall:.1f} s")
        if code != 0 or not result.is_file():
            print("the cell wrote no results")
            return 1
        record = json.loads(result.read_text())
        print("score:", json.dumps(record["results"].get("approx_agnews", {}), default=str)[:200])
        stages = record.get("config", {}).get("approx", {}).get("stage_seconds", {})
        print("stage seconds:", ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
        if args.device.startswith("cuda"):
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
        for caller, device, dtype in loads:
            print(f"load_model from {caller}: {device} {dtype}")
        off = misplaced(loads, args)
        if off:
            print(f"NOTE: {len(off)} of {len(loads)} model loads were not on {args.device} in {args.dtype} "
                  f"({', '.join(sorted(set(off)))})")
    return 0


STAGE_STRATEGIES = ("likelihood_ratio", "select", "rds", "gen_knn")


@restoring_env
def stage_check(args) -> int:
    """Part (c): each strategy's ``run_selection`` on the device in ``--dtype`` and on the CPU in
    float32, each in a fresh cache; 0 when every run selected its documents."""
    import numpy as np

    from lm_eval_approx.approx_config import ApproxConfig
    from lm_eval_approx.pipeline import LABELS_FILE, LOSS_FILE, run_selection

    print(f"\n## the stages on {args.device} in {args.dtype} against the CPU in float32")
    with tempfile.TemporaryDirectory(prefix="gpu-check-stages-") as tmp:
        root = Path(tmp)
        use_mirror(root)
        base, finetuned = tiny_model(root / "base", seed=0), tiny_model(root / "finetuned", seed=1)
        loads, restore = record_model_loads()
        runs: dict[tuple[str, str], dict] = {}
        try:
            for strategy in STAGE_STRATEGIES:
                for reference, (device, dtype) in enumerate(((args.device, args.dtype), ("cpu", "float32"))):
                    os.environ["LM_EVAL_APPROX_CACHE"] = str(root / f"cache-{reference}")
                    config = ApproxConfig(base=base, finetuned=finetuned, corpus="seed:wikitext2+seed:dbpedia",
                                          corpus_size=40, strategy=strategy, k=4, dim=64, target_size=8,
                                          extract_batch_size=8, extract_max_length=64, device=device,
                                          extract_dtype=dtype)
                    first = len(loads)
                    start = time.perf_counter()
                    selected = run_selection(config)
                    runs[strategy, reference] = {"seconds": time.perf_counter() - start, "stages": selected.stages,
                                                 "picks": {row.id for row in selected.rows}}
                    if reference:
                        del loads[first:]  # only the device runs' loads are checked
        finally:
            restore()
        for strategy in STAGE_STRATEGIES:
            on, ref = runs[strategy, 0], runs[strategy, 1]
            labels = [np.load(run["stages"][0].path / LABELS_FILE) for run in (on, ref)]
            losses = [np.load(run["stages"][0].path / LOSS_FILE).astype(np.float64) for run in (on, ref)]
            worst = float(np.max(np.abs(losses[0] - losses[1]) / np.maximum(np.abs(losses[1]), 1e-12)))
            print(f"{strategy} cpu float32 / {args.device} {args.dtype}: {ref['seconds'] / on['seconds']:.2f}x "
                  f"({on['seconds']:.2f} s against {ref['seconds']:.2f} s)")
            print(f"{strategy}: labels agree on {np.mean(labels[0] == labels[1]):.1%}, θf losses within {worst:.1e} "
                  f"(relative), {len(on['picks'] & ref['picks'])} of {len(ref['picks'])} picks shared")
        for caller in sorted({caller for caller, _, _ in loads}):
            kinds = sorted({f"{device} {dtype}" for c, device, dtype in loads if c == caller})
            print(f"load_model from {caller}: {', '.join(kinds)}")
        off = misplaced(loads, args)
        if off:
            print(f"NOTE: {len(off)} of {len(loads)} model loads were not on {args.device} in {args.dtype} "
                  f"({', '.join(sorted(set(off)))})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--small", action="store_true", help="small configs, small batches: a smoke test")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="model dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--batch", type=int, help="documents per batch (default 32, 2 with --small)")
    parser.add_argument("--tokens", type=int, help="tokens per document (default 128, 32 with --small)")
    parser.add_argument("--rounds", type=int, help="timed rounds after a warm-up (default 3, 1 with --small)")
    parser.add_argument("--models", default=",".join(REAL_CONFIGS), help="comma-separated: " + ", ".join(REAL_CONFIGS))
    parser.add_argument("--skip-cell", action="store_true", help="throughput only: no cell, no stage check")
    parser.add_argument("--skip-stages", action="store_true", help="no stage check (part c)")
    args = parser.parse_args(argv)
    if args.device.split(":")[0] not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: cuda or cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device} asked for, but torch sees no CUDA device "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). On a machine without a GPU run "
              "`python benchmarks/gpu_check.py --device cpu --small` for the smoke test.", file=sys.stderr)
        return 2
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.batch = args.batch or (2 if args.small else 32)
    args.tokens = args.tokens or (32 if args.small else 128)
    args.rounds = args.rounds or (1 if args.small else 3)
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}")
    for name in args.models.split(","):
        if name not in REAL_CONFIGS:
            parser.error(f"--models: {name!r} is not one of {', '.join(REAL_CONFIGS)}")
        report_throughput(name, throughput(name, args), args)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()  # the model of the last one is gone with its closures
    if args.skip_cell:
        return 0
    return one_cell(args) or (0 if args.skip_stages else stage_check(args))


if __name__ == "__main__":
    sys.exit(main())
