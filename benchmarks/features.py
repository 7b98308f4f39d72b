"""Feature-extraction throughput next to a plain forward pass, measured side by side in one run.

For each model (a random-init SmolLM2-135M with the real config, and a small GPT-2), batch 16 ×
64 tokens: examples/s of a no-grad forward, of ``head`` features (classification loss on one label
token, and the mean-token LM loss), of ``changed`` features over every decoder linear layer (LM
loss, forward + backward with frozen weights; ‖g‖² projected, the default, and exact), and of the
dense-projection oracle where its matrix fits. Each method runs once per round, rounds interleave the methods (the machine is shared), and
the best round per method is reported (the least disturbed by other load). Goals: head ≥ 0.8× forward, changed ≥ 0.4× forward.
The last line compares θf's pseudo-labels plus head features of a batch of AG-News-like documents (three
one-token choices, one three-token choice) taken in two passes (the packed pseudo-label forward of
``pseudo_labels.py``, then the features of the chosen labels) with the fused single forward (``fused.py``).
``--clock cpu`` times each method by the process's CPU time instead of the wall clock: on a machine
other jobs share, it leaves out the time the process waits for a core (use it with ``--threads 1``:
with more threads it sums their time, spin-waits included).

    python benchmarks/features.py [--rounds 3] [--threads 2] [--models smollm2,gpt2] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from lm_eval_approx.models.layers import changed_modules, head_name, layer_shape, linear_modules
from lm_eval_approx.features.gradients import head_factors, layer_factors, total_sqnorm
from lm_eval_approx.features.encoding import Batch, Encoded, collate
from lm_eval_approx.features.fused import PseudoLabelChoice, carrier_of
from lm_eval_approx.features.projection import DENSE_MAX_ELEMENTS, make_projector
from lm_eval_approx.features.pseudo_labels import _packed_choice_logprobs

BATCH, TOKENS, DIM = 16, 64, 4096
PERTURBATION = 1e-3
# AG News under the SmolLM2 tokenizer: " World", " Sports", " Business" one token, " Sci/Tech" three
CHOICE_TOKENS = (1, 1, 1, 3)
TWO_PASSES, FUSED = "pseudo-labels + head features (two passes)", "pseudo-labels + head features (fused)"


def smollm2_config():
    """The SmolLM2-135M config (from the converted model when available, else its published values)."""
    from transformers import AutoConfig, LlamaConfig

    from lm_eval_approx.errors import ApproxError
    from lm_eval_approx.models.loading import resolve_model

    try:
        return AutoConfig.from_pretrained(resolve_model("smollm2-135m"))
    except (ApproxError, OSError, ValueError) as exc:
        print(f"(SmolLM2 config not found: {exc.__class__.__name__}; using its published values)")
        return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                           tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)


def gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=8192, n_positions=256, n_embd=256, n_layer=4, n_head=4, tie_word_embeddings=True)


def build_pair(config):
    """Random θ0 and a θf whose every decoder linear layer differs (the worst case for ``changed``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model0 = AutoModelForCausalLM.from_config(config).eval()
    model_f = copy.deepcopy(model0)
    head = model_f.get_output_embeddings()
    with torch.no_grad():
        for module in linear_modules(model_f).values():
            if module is not head:
                module.weight.add_(torch.randn_like(module.weight) * PERTURBATION)
    return model0, model_f


def batches(vocab: int):
    ids = torch.randint(1, vocab, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    lm = Batch(ids, mask, torch.arange(TOKENS - 1).expand(BATCH, -1).clone(), ids[:, 1:].clone(),
               torch.full((BATCH, TOKENS - 1), 1.0 / (TOKENS - 1)))
    cls = Batch(ids, mask, torch.full((BATCH, 1), TOKENS - 2), ids[:, -1:].clone(), torch.ones(BATCH, 1))
    return lm, cls


def choice_documents(vocab: int) -> list[list[Encoded]]:
    """Each document's encodings, one per choice: a shared context, then the choice's tokens."""
    generator = torch.Generator().manual_seed(1)
    choices = torch.randint(1, vocab, (sum(CHOICE_TOKENS),), generator=generator).split(CHOICE_TOKENS)
    contexts = torch.randint(1, vocab, (BATCH, TOKENS - max(CHOICE_TOKENS)), generator=generator).tolist()
    return [[Encoded(ctx + c.tolist(), len(ctx), 1.0) for c in choices] for ctx in contexts]


def labelled_features(model_f, head, proj):
    """(two passes, fused): pseudo-labels then head features of the chosen labels, and both from one forward."""
    documents = choice_documents(model_f.config.vocab_size)
    pad = type("Pad", (), {"pad_token_id": 0})()

    def project(loss_factors):
        with torch.no_grad():
            proj.project(loss_factors[1])
            total_sqnorm(loss_factors[1])

    def two_passes():
        labels = _packed_choice_logprobs(model_f, pad, documents, BATCH, TOKENS).argmax(axis=1)
        batch = collate([encodings[y] for encodings, y in zip(documents, labels)], 0)
        project(head_factors(model_f, batch, head))

    def fused():
        carriers = [carrier_of(encodings) for encodings in documents]
        batch = collate([c.encoding for c in carriers], 0)
        project(head_factors(model_f, batch, head, choose=PseudoLabelChoice(carriers, "cpu")))

    return two_passes, fused


def methods(model0, model_f):
    lm, cls = batches(model_f.config.vocab_size)
    head = head_name(model_f)
    mods = linear_modules(model_f)
    changed = changed_modules(model0, model_f)
    head_proj = make_projector("kronecker", {head: layer_shape(mods[head])}, DIM)
    changed_proj = make_projector("kronecker", {n: layer_shape(mods[n]) for n in changed}, DIM)

    def forward():
        with torch.no_grad():
            model_f(input_ids=lm.input_ids, attention_mask=lm.attention_mask)

    def features(batch, names, proj, fn, exact=True):
        def run():
            _, factors = fn(model_f, batch, names[0]) if fn is head_factors else fn(model_f, batch, names)
            with torch.no_grad():
                feats = proj.project(factors)
                total_sqnorm(factors) if exact else feats.pow(2).sum(dim=1)
        return run

    table = {"forward": forward,
             "head (classification)": features(cls, [head], head_proj, head_factors),
             "head (lm)": features(lm, [head], head_proj, head_factors),
             "changed (lm)": features(lm, changed, changed_proj, layer_factors, exact=False),
             "changed (lm) + exact ‖g‖²": features(lm, changed, changed_proj, layer_factors)}
    out, inp = layer_shape(mods[head])
    dense_dim = DENSE_MAX_ELEMENTS // (out * inp)
    if dense_dim >= 1:
        dense = make_projector("dense", {head: (out, inp)}, min(DIM, dense_dim))
        table[f"dense head (classification, d={dense.dim})"] = features(cls, [head], dense, head_factors)
    table[TWO_PASSES], table[FUSED] = labelled_features(model_f, head, head_proj)
    return table, len(changed)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(name, config, rounds, clock=time.perf_counter):
    model0, model_f = build_pair(config)
    table, n_changed = methods(model0, model_f)
    times = {key: [] for key in table}
    for fn in table.values():
        fn()
    for _ in range(rounds):
        for key, fn in table.items():
            start = clock()
            fn()
            times[key].append(clock() - start)
    rate = {key: BATCH / min(ts) for key, ts in times.items()}
    params = sum(p.numel() for p in model_f.parameters()) / 1e6
    print(f"\n## {name} ({params:.1f}M params, {n_changed} changed layers), batch {BATCH} × {TOKENS} tokens")
    print("| method | examples/s | ratio to forward |\n|---|---|---|")
    for key, value in rate.items():
        print(f"| {key} | {value:.1f} | {value / rate['forward']:.2f}x |")
    for key in rate:
        if key not in ("forward", TWO_PASSES, FUSED):
            print(f"{name} {key} / forward: {rate[key] / rate['forward']:.2f}x")
    print(f"{name} pseudo-labels + head features, two passes / fused: {rate[FUSED] / rate[TWO_PASSES]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="smollm2,gpt2")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock, or the process's CPU time (robust to other load with --threads 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = {"smollm2": ("SmolLM2-135M (random init)", smollm2_config), "gpt2": ("small GPT-2", gpt2_config)}
    for key in args.models.split(","):
        label, make = configs[key]
        measure(label, make(), args.rounds, CLOCKS[args.clock])


if __name__ == "__main__":
    main()
