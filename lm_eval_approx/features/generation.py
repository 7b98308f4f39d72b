"""Texts sampled from the weights alone: what the ``weights`` condition knows of the target task.

The paper's approximator has θ0, θf, a public pool and the task's prompt template, nothing more.
Where a method wants texts of the target distribution (a retraining rule's monitor texts, a
baseline's retrieval targets), this module samples them from the models:

* ``finetuned``: θf continues the task's prompt prefix (``"Article:"`` for AG News; the prefix
  token alone for a language-modelling task). A classification θf trained with its loss on the
  label tokens only drifts into label words ("Business Business …"), so the first token of every
  label word is banned, with a repetition penalty.
* ``base``: θ0 continues the same prefix (what the pretrained model writes there).
* ``contrast``: log p_θf − log p_θ0, over tokens θf itself finds plausible (p_θf ≥ α · max p_θf,
  α = 0.1; contrastive decoding, Li et al. 2023): what θf learned to say that θ0 would not.

Every row of a batch starts from the same prefix, so batches need no padding. A sample ends at
the first newline (the template goes on after the text there) or at the end-of-text token, and
samples shorter than ``min_words`` words are dropped. Sampling is seeded and batch-deterministic.

The models run on their device in their dtype (``generated_texts``: the pipeline's ``device`` and
``extract_dtype``); the next-token logits are upcast to float32 before the bans, the contrast, the
penalty, the temperature and the top-p cut, so a bfloat16 model samples by the same rule. The seeded
generator lives on the models' device: a GPU draws another stream than a CPU from the same seed.
The cached texts are keyed by the dtype, not by the device (either draw is a valid sample of the
same models).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lm_eval_approx.cache.atomic import write_json_atomic
from lm_eval_approx.cache.stages import StageRecord, run_stage
from lm_eval_approx.config_checks import check_choice, check_int, check_number
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.devices import DEFAULT_DTYPE, EXTRACT_DTYPE_KEY
from lm_eval_approx.tasks.kinds import CLASSIFICATION, task_key

FINETUNED, BASE, CONTRAST = "finetuned", "base", "contrast"
SOURCES = (FINETUNED, BASE, CONTRAST)
PLACEHOLDER = "{text}"
PLAUSIBILITY = 0.1  # contrastive decoding's α: tokens below α · max p_θf are never sampled
GENERATION_STAGE = "generations"
TEXTS_FILE = "texts.json"
NUCLEUS_HEAD = 512  # tokens searched for the top-p nucleus before a row is sorted in full
MAX_BATCHES_PER_TEXT = 4  # give up (named error) after this many batches' worth of short samples


@dataclass(frozen=True)
class GenerationSettings:
    """How texts are sampled (see the module docstring)."""

    source: str = FINETUNED
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.95
    repetition_penalty: float = 1.3
    min_words: int = 5
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_choice("source", self.source, SOURCES)
        for name in ("max_new_tokens", "min_words", "batch_size"):
            check_int(name, getattr(self, name), minimum=1)
        check_number("temperature", self.temperature, low=0.0, low_open=True)
        check_number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        check_number("repetition_penalty", self.repetition_penalty, low=1.0)


def prompt_prefix(spec) -> str:
    """The rendered prompt before the text, trailing spaces removed (they belong to the text's first
    token), for a classification task; empty for a language-modelling task (the text is all)."""
    if spec.kind != CLASSIFICATION:
        return ""
    template = spec.template
    if PLACEHOLDER not in template:
        raise ConfigError("task", spec.name, "a classification task whose prompt shows the text")
    return template.split(PLACEHOLDER, 1)[0].rstrip()


def banned_token_ids(tokenizer, spec) -> list[int]:
    """The first token of every label word, as it starts a word and as it follows a space, in the
    case given and capitalised (classification only)."""
    if spec.kind != CLASSIFICATION:
        return []
    banned: set[int] = set()
    for choice in spec.choices:
        word = str(choice).strip()
        for variant in {word, word.capitalize(), word.lower()}:
            for text in (variant, " " + variant):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if ids:
                    banned.add(int(ids[0]))
    return sorted(banned)


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a sample: every token whose text holds a newline, and the end-of-text token."""
    stops = {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    return sorted(stops)


def prefix_ids(tokenizer, spec, add_bos_token: bool | None = None) -> list[int]:
    """The input every sample starts from: the encoded prompt prefix, or the prefix token alone."""
    from lm_eval_approx.features.encoding import prefix_token_id, tok_encode  # torch: only when sampling

    prefix = prompt_prefix(spec)
    ids = tok_encode(tokenizer, prefix, add_bos_token) if prefix else []
    return ids or [prefix_token_id(tokenizer)]


def next_token_scores(logits, base_logits, generated, banned, settings: GenerationSettings):
    """Log-scores of the next token for each row: θf's (or θ0's) log-probabilities with the bans, or
    the contrast over the tokens that stay plausible after them; then the repetition penalty on
    tokens each row already generated, and the temperature."""
    import torch

    scores = torch.log_softmax(logits.float(), dim=-1)
    if banned:
        scores[:, banned] = -float("inf")
    if base_logits is not None:
        base = torch.log_softmax(base_logits.float(), dim=-1)
        plausible = scores >= scores.max(dim=-1, keepdim=True).values + float(np.log(PLAUSIBILITY))
        scores = torch.where(plausible, scores - base, torch.full_like(scores, -float("inf")))
    if generated is not None and settings.repetition_penalty > 1.0:
        # CTRL's penalty on log-scores: a repeated token loses log(penalty) nats.
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, generated, True)
        scores = torch.where(seen, scores - float(np.log(settings.repetition_penalty)), scores)
    return scores / settings.temperature


def sample_from(scores, top_p: float, generator, head: int = NUCLEUS_HEAD):
    """One token per row from softmax(scores), restricted to the smallest top-p nucleus. The nucleus
    is looked for among each row's ``head`` likeliest tokens first (a full sort of a 49k vocabulary
    per row cost more than the model's forward); a row whose nucleus is larger is sorted in full."""
    import torch

    probs = torch.softmax(scores, dim=-1)
    ordered, order = probs.topk(min(head, probs.shape[-1]), dim=-1)
    wide = torch.nonzero(ordered.sum(dim=-1) < top_p).flatten()
    picks = _nucleus_pick(ordered, order, top_p, generator)
    if len(wide):
        full, full_order = probs[wide].sort(dim=-1, descending=True)
        picks[wide] = _nucleus_pick(full, full_order, top_p, generator)
    return picks


def _nucleus_pick(ordered, order, top_p: float, generator):
    """Sample from each row's probabilities ``ordered`` (descending, token ids ``order``) cut to the
    smallest prefix whose mass reaches ``top_p``."""
    import torch

    keep = ordered.cumsum(dim=-1) - ordered < top_p  # always keeps the most likely token
    ordered = torch.where(keep, ordered, torch.zeros_like(ordered))
    picks = torch.multinomial(ordered / ordered.sum(dim=-1, keepdim=True), 1, generator=generator)
    return order.gather(1, picks).squeeze(1)


def _sample_batch(model, base_model, start: list[int], rows: int, banned, stops, settings, generator):
    """Token ids each row generated before its stop token (stop token excluded). A row that stops
    leaves the batch (and the key-value caches), so the rest run on smaller batches. Tensors live on
    the generator's device (the models'); ``alive``, the rows' places in the output, stays on the CPU."""
    import torch

    device = generator.device
    input_ids = torch.tensor([start] * rows, dtype=torch.long, device=device)
    stop = torch.tensor(stops, dtype=torch.long, device=device)
    cache = base_cache = generated = None
    alive = torch.arange(rows)
    out: list[list[int]] = [[] for _ in range(rows)]
    with torch.no_grad():
        for _ in range(settings.max_new_tokens):
            step = model(input_ids=input_ids, cache=cache, use_cache=True)
            cache, base_logits = step.cache, None
            if base_model is not None:
                base_step = base_model(input_ids=input_ids, cache=base_cache, use_cache=True)
                base_cache, base_logits = base_step.cache, base_step.logits[:, -1]
            scores = next_token_scores(step.logits[:, -1], base_logits, generated, banned, settings)
            token = sample_from(scores, settings.top_p, generator)
            going = ~torch.isin(token, stop)
            going_here = going.cpu()
            for row, tok in zip(alive[going_here].tolist(), token[going].tolist()):
                out[row].append(int(tok))
            if not bool(going_here.any()):
                break
            generated = token[:, None] if generated is None else torch.cat([generated, token[:, None]], dim=1)
            if not bool(going_here.all()):
                keep = torch.nonzero(going).flatten()
                cache.batch_select_indices(keep)
                if base_cache is not None:
                    base_cache.batch_select_indices(keep)
                alive, generated, token = alive[going_here], generated[keep], token[keep]
            input_ids = token[:, None]
    return out


def sample_texts(model, tokenizer, spec, n: int, seed: int, settings: GenerationSettings = GenerationSettings(),
                 base_model=None, add_bos_token: bool | None = None) -> tuple[list[str], int]:
    """``n`` sampled texts (module docstring) and the number of tokens generated for them.
    ``base_model`` (θ0) is required by, and only used by, the ``contrast`` source, on θf's device."""
    import torch

    from lm_eval_approx.features.losses import model_device

    check_int("n", n, minimum=1)
    if (settings.source == CONTRAST) != (base_model is not None):
        raise ConfigError("base_model", type(base_model).__name__, "θ0 for source contrast, and only for it")
    device = model_device(model)
    if base_model is not None and model_device(base_model) != device:
        raise ConfigError("base_model", str(model_device(base_model)), f"θ0 on θf's device ({device})")
    start = prefix_ids(tokenizer, spec, add_bos_token)
    banned = banned_token_ids(tokenizer, spec) if settings.source != BASE else []
    stops = stop_token_ids(tokenizer)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    texts: list[str] = []
    tokens = 0
    for _ in range(MAX_BATCHES_PER_TEXT * -(-n // settings.batch_size)):
        for ids in _sample_batch(model, base_model, start, settings.batch_size, banned, stops, settings, generator):
            tokens += len(ids) + 1
            text = " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())
            if len(text.split()) >= settings.min_words and len(texts) < n:
                texts.append(text)
        if len(texts) >= n:
            return texts, tokens
    raise ConfigError("generation", f"{len(texts)} of {n} texts of {settings.min_words}+ words",
                      "a model whose samples after the prompt prefix are long enough (lower min_words, or raise "
                      "max_new_tokens)")


def generated_texts(base: str, finetuned: str, spec, n: int, seed: int,
                    settings: GenerationSettings = GenerationSettings(), add_bos_token: bool | None = None, *,
                    device: str = "cpu", dtype: str = DEFAULT_DTYPE) -> tuple[list[str], StageRecord]:
    """``sample_texts`` of the models named ``base`` (θ0) and ``finetuned`` (θf), loaded on ``device``
    in ``dtype``, cached as a stage (``generations``) keyed by the sampling model(s), the task's
    prompt, n, seed, settings and the dtype (float32 is left out of the key: ``cache/keys.py``); with
    the stage's record (its info holds the tokens generated)."""
    from lm_eval_approx.models.loading import load_model, load_tokenizer, model_fingerprint

    sampler = base if settings.source == BASE else finetuned
    inputs = {"sampler": model_fingerprint(sampler), "task": task_key(spec), "n": n, "seed": seed,
              "settings": asdict(settings), "add_bos_token": add_bos_token, EXTRACT_DTYPE_KEY: dtype}
    if settings.source == CONTRAST:
        inputs["base"] = model_fingerprint(base)

    def compute(folder: Path) -> dict:
        model = load_model(sampler, dtype, device)
        base_model = load_model(base, dtype, device) if settings.source == CONTRAST else None
        texts, tokens = sample_texts(model, load_tokenizer(base), spec, n, seed, settings, base_model,
                                     add_bos_token)
        write_json_atomic(folder / TEXTS_FILE, texts)
        forward_models = 2 if base_model is not None else 1
        return {"texts": len(texts), "source": settings.source, "generated_tokens": tokens * forward_models}

    stage = run_stage(GENERATION_STAGE, inputs, compute)
    return json.loads((stage.path / TEXTS_FILE).read_text(encoding="utf-8")), stage
