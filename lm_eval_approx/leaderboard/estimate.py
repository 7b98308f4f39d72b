"""``--dry-run``: the planned cells and a rough cost, from throughput rates per device.

seconds ≈ expert_docs·epochs / r_train + N·(1/r_label + [base loss] 1/r_loss + Σ_(params, α) 1/r_features(params))
          + Σ_cells k·epochs / r_train + Σ_cells Σ_tasks limit / r_score(task),

with N the candidate count and the sum over the distinct (parameter set, α) stores the strategies
need (a store is extracted once and shared: α = 1 by select and every M of select_checkpoints,
which adds α = j/M for j < M), and epochs the recipe's maximum (early
stopping only shortens it). Pseudo-labels of a classification task cost one forward per choice, so
they run at the multiple-choice scoring rate; a language-modelling task's labels are one forward.
Scoring a task runs at the text rate when lm-eval scores whole texts in rolling windows
(``loglikelihood_rolling``) and at the choice rate otherwise (multiple choice, or one short
``loglikelihood`` request per document, such as the last-word and last-token tasks).
The CPU rates are what the ``results/cpu`` grids measured with SmolLM2-135M on two quiet cores
(stage seconds in each cell's results JSON): head features 5.3 candidates/s, ``changed`` features
2.6/s, pseudo-labels 6/s (MS MARCO) and ~6/s (AG News, 4 choices in one packed row; `make demo`,
2026-12-02: 800 candidates in 126 s, and 300 test documents scored in ~53 s a model, loading
included), θ0 losses ~8/s, LoRA training
2.0 examples/s for classification and 1.1/s on whole passages (language modelling) (LoRA on the head only or on the top blocks: the default's rate over the time
ratio ``benchmarks/memory.py`` measured for it).

The rates scale with θ0 and the device: rate(stage) = CPU_RATES[stage] · (P_ref / P) · throughput(device),
so a stage's seconds grow as P / P_ref, with P θ0's parameter count (``models/size.py``: a table of
the presets' models, safetensors headers, or the config built on the meta device; no weights are
loaded) and P_ref = 134,515,008, SmolLM2-135M's, at which the CPU rates were measured. Cost
proportional to parameters per token is an approximation: it is what the matrix products cost (a
forward ~2P floating-point operations a token, a backward about twice that), and it ignores
attention's T² term, the vocabulary projection's own share (a large vocabulary on a small model
costs more than its share), tokenising and lm-eval's per-request overhead, which do not grow with P. The sentence model of ``gen_knn``
(all-MiniLM-L6-v2) is not θ0 and keeps its rate. The device's throughput is a ratio per device class
(``DEVICE_CLASSES``): 1 for the CPU the rates come from; for ``cuda``, an A100/H100 80 GB class at an
assumed 100x. The GPU figure is not measured here (no GPU was at hand when the rates were taken): it
is an order of magnitude, not a promise, and ``benchmarks/gpu_check.py`` prints the measured feature
throughput to replace it.

With ``--only PATTERN`` only the matching cells are planned (and only the feature sets their
strategies need). With ``--resume --out DIR`` the cells already finished in DIR (same cell hash) are listed as done
and left out of the retraining and scoring parts; the expert and the labels/features stay in the
estimate, because whether their cached stages survive is only known once the run looks them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from lm_eval_approx.errors import ApproxError
from lm_eval_approx.leaderboard.config import APPROX, LeaderboardConfig
from lm_eval_approx.models.size import SMOLLM2_135M_PARAMETERS, parameter_count
from lm_eval_approx.strategies.base import BASE_ENCODER, FEATURES, LOSS_BASE, SENTENCE_ENCODER, TARGET_TEXTS
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.tasks.kinds import CLASSIFICATION
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

CPU_RATES = {"train": 2.0, "train_text": 1.1, "label_text": 6.0, "loss": 8.0, "features_head": 5.3, "features_changed": 2.6,
             "score_choice": 5.5, "score_text": 1.0, "generate": 3.5, "embed_sentence": 40.0}
# generate: texts sampled from θf after the prompt prefix (features/generation.py; 128 AG News samples
# of up to 64 tokens in 34 s on two quiet cores, 2026-12-06). embed_sentence: all-MiniLM-L6-v2 (22M
# parameters) on raw texts, about 6x θ0's loss rate for a model 6x smaller.
# train_text: language-modelling retraining trains on whole passages, not on a label token after a
# 64-word prompt; side by side on one thread each (2026-12-03) an MS MARCO cell trained at
# 0.76 examples/s and an AG News cell at 1.37/s, so 0.55 of the classification rate.
HEAD_PARAMS = ("head", "head_labels")
# The model CPU_RATES were measured with (SmolLM2-135M); every rate but the sentence model's scales
# by REFERENCE_PARAMETERS / θ0's parameter count.
REFERENCE_PARAMETERS = SMOLLM2_135M_PARAMETERS
NOT_THETA0 = ("embed_sentence",)


@dataclass(frozen=True)
class DeviceClass:
    """A kind of device and its throughput relative to the 2-core CPU the rates were measured on."""

    name: str
    throughput: float


# cuda: NOT measured. An assumption from peak figures: the two reference cores computed the head
# features at ~0.1 TFLOP/s (5.3 documents/s of ~90 tokens, ~2·134.5M operations a token), and an
# A100's bf16 peak is 312 TFLOP/s (an H100's ~3x that); at 10% of the A100's peak, and with lm-eval's
# per-request overhead and the small models' poor use of a GPU taken off, about 100x. Replace it with
# what benchmarks/gpu_check.py measures on the GPU at hand.
DEVICE_CLASSES = {
    "cpu": DeviceClass("2 CPU cores (the measured rates)", 1.0),
    "cuda": DeviceClass("one A100/H100-class 80 GB GPU (an assumed throughput, not measured)", 100.0),
}
# Training time of the cheaper LoRA recipes relative to the default, side by side in one run of
# benchmarks/memory.py (SmolLM2-135M, 2026-12-02): the head alone, and the top 4 of 30 blocks + head
# (used for any lora_layers > 0: rough, the cost grows with the number of adapted blocks).
HEAD_ONLY_TIME, TOP_BLOCKS_TIME = 0.38, 0.49
# Training time of each fast recipe field relative to its old value, measured one at a time in the
# training loop of a rule cell by benchmarks/cell_cost.py (SmolLM2-135M, 2 cores with AVX512-BF16,
# 2026-12-06); bf16 also speeds up the monitor probe, which runs under the training's autocast.
FAST_TIME = {("mixed_precision", "bf16"): 0.75, ("batch_order", "bucketed"): 0.91, ("dropout_sampler", "fast"): 0.92}
# prefix_cache: the frozen prefix's states cost about 0.6 of an epoch once, then each epoch about 0.4 of
# one without the cache (benchmarks/prefix_cache.py: 0.6 and 1 / 2.78 at lora_layers 2; the demo's
# 2-epoch retraining at lora_layers 4 took 0.73 of its time without the cache, 2026-12-07).
PREFIX_ONCE, PREFIX_EPOCH = 0.6, 0.4


@dataclass
class Estimate:
    """Planned cells and estimated seconds per part."""

    cells: list[str]
    seconds: dict[str, float]
    unknown: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def device_class(device: str) -> DeviceClass:
    """The class of ``device`` (``cuda:1`` is ``cuda``); an unknown kind is costed as the CPU."""
    return DEVICE_CLASSES.get(str(device).split(":")[0], DEVICE_CLASSES["cpu"])


def scaled_rates(parameters: int | None = None, device: str = "cpu") -> dict[str, float]:
    """Documents per second of every stage for a θ0 of ``parameters`` (None: SmolLM2-135M's) on
    ``device``: the measured CPU rate × P_ref / P × the device class's throughput."""
    size = REFERENCE_PARAMETERS / (parameters or REFERENCE_PARAMETERS)
    speed = device_class(device).throughput
    return {name: rate * speed * (1.0 if name in NOT_THETA0 else size) for name, rate in CPU_RATES.items()}


def _rates(config: LeaderboardConfig) -> tuple[dict[str, float], list[str]]:
    """The rates of ``config`` (its θ0 and device) and what they assume, one line each."""
    parameters = parameter_count(config.base)
    kind = device_class(config.device)
    if parameters is None:
        size = (f"θ0 {config.base!r}: size not found on this machine (no folder, cached snapshot or known "
                f"hub id), costed as SmolLM2-135M ({REFERENCE_PARAMETERS / 1e6:.1f}M parameters)")
    else:
        size = (f"θ0 {parameters / 1e6:,.1f}M parameters: {parameters / REFERENCE_PARAMETERS:.2f}x SmolLM2-135M's "
                "per-document time (cost ∝ parameters)")
    device = f"device {config.device}: {kind.name}, {kind.throughput:g}x the CPU rates"
    if str(config.device).split(":")[0] not in DEVICE_CLASSES:
        device = f"device {config.device}: not a known device class, costed at the CPU rates"
    return scaled_rates(parameters, config.device), [size, device]


def _is_choice_task(name: str, include_path=None) -> bool:
    """An approximation task scored by choices (the other tasks are costed as text perplexity)."""
    try:
        return get_task_spec(name, include_path).kind == CLASSIFICATION
    except ApproxError:
        return False


def _scoring_rate(rates: dict[str, float], name: str, include_path=None) -> float:
    """Documents per second lm-eval scores of task ``name``: a whole text in rolling windows at the
    text rate; a multiple-choice or single-loglikelihood document (a short request per choice) at
    the choice rate."""
    from lm_eval_approx.tasks.lm_eval_tasks import task_output_type

    try:
        kind = task_output_type(name, include_path)
    except ApproxError:
        kind = None
    if kind is None:
        return rates["score_choice"] if _is_choice_task(name, include_path) else rates["score_text"]
    return rates["score_text"] if kind == "loglikelihood_rolling" else rates["score_choice"]


def _train_rate(rates: dict[str, float], recipe, task: str, include_path=None) -> float:
    """Examples per second of ``recipe`` on ``task``: the default LoRA rate (classification, or
    whole texts for a language-modelling task), faster when the backward pass stops early (LoRA on
    the head only, or on the top ``lora_layers`` blocks)."""
    rate = rates["train" if _is_choice_task(task, include_path) else "train_text"] / _fast_time(recipe)
    if recipe.method != "lora":
        return rate
    if tuple(recipe.target_modules) == ("head",):
        return rate / HEAD_ONLY_TIME
    return rate / TOP_BLOCKS_TIME if recipe.lora_layers else rate


def _epochs_paid(recipe) -> float:
    """The epochs a training costs in full-forward epochs: its epochs, or with the frozen-prefix
    cache the states' one-off cost plus the cheaper epochs."""
    if getattr(recipe, "prefix_cache", False) and recipe.lora_layers:
        return PREFIX_ONCE + PREFIX_EPOCH * recipe.epochs
    return float(recipe.epochs)


def _fast_time(recipe, fields: tuple[str, ...] = ("mixed_precision", "batch_order", "dropout_sampler")) -> float:
    """The measured time factor of the recipe's fast fields (1.0 for the old recipe)."""
    factor = 1.0
    for name in fields:
        factor *= FAST_TIME.get((name, getattr(recipe, name)), 1.0)
    return factor


def _feature_rate(rates: dict[str, float], params: str) -> float:
    """Head features need a forward only; ``changed`` or named layers need a backward as well."""
    return rates["features_head"] if params in HEAD_PARAMS else rates["features_changed"]


def estimate(config: LeaderboardConfig, done: frozenset[str] = frozenset(),
             only: list[str] | None = None) -> Estimate:
    """Seconds for expert training, labels/features, and retraining and scoring of every cell
    chosen by ``only`` (all without it) and not in ``done`` (cell ids). A retraining under a stop
    signal is counted at its cap (``epochs``): an upper bound, since it may stop earlier."""
    rates, notes = _rates(config)
    unknown: list[str] = []
    seconds = {"expert": 0.0, "labels+features": 0.0, "retraining": 0.0, "scoring": 0.0}
    if config.expert.data is not None:
        if config.expert.size is None:
            unknown.append("expert training (expert.size is null: the whole corpus)")
        else:
            recipe = config.recipe_for(config.expert.recipe)
            seconds["expert"] = config.expert.size * _epochs_paid(recipe) / _train_rate(rates, recipe, config.task,
                                                                               config.include_path)
    cells = config.chosen_cells(only)
    labels = {cell.label for cell in cells if cell.kind == APPROX and cell.id not in done}
    strategies = [s for s in config.strategies if s.label in labels]
    n = config.corpus.size
    if n is None:
        unknown.append("labels and features (corpus.size is null: the whole corpus)")
    elif strategies:
        choice_task = _is_choice_task(config.task, config.include_path)
        # approx.fused_labels: θf's pseudo-labels are read in the forward of its own feature store
        # (the pipeline's fused pass), so that store is built whatever the strategies need, and no
        # labelling pass of its own runs.
        fused = choice_task and bool(config.approx.get("fused_labels"))
        seconds["labels+features"] = 0.0 if fused else n / rates["score_choice" if choice_task else "label_text"]
        needs = [strategy_registry().get(s.name).obj.requires for s in strategies]
        if any(LOSS_BASE in r for r in needs):
            seconds["labels+features"] += n / rates["loss"]
        feature_sets = {
            (s.approx.get("params", config.approx.get("params", "head")), Fraction(j, m))
            for s, r in zip(strategies, needs) if FEATURES in r
            for m in [s.approx.get("checkpoints", config.approx.get("checkpoints", 1))] for j in range(1, m + 1)
        }
        if fused:
            feature_sets.add((config.approx.get("params", "head"), Fraction(1)))
        seconds["labels+features"] += sum(n / _feature_rate(rates, params) for params, _ in feature_sets)
        seconds["labels+features"] += _target_seconds(config, strategies, needs, rates, n)
    monitored = set()
    for cell in cells:
        if cell.id in done:
            continue
        if cell.kind == APPROX:
            recipe = config.retraining_for(cell.label)
            seconds["retraining"] += cell.k * _epochs_paid(recipe) / _train_rate(rates, recipe, config.task, config.include_path)
            if recipe.uses_probe:
                # Every epoch scores the monitor texts; θ0 (and θf, for a teacher) score them once per
                # draw of monitor texts, which the cells of one retraining seed share (cached stages).
                seed = cell.seed if config.seed_retraining else recipe.seed
                draw = (seed, recipe.monitor_size, recipe.mixed_precision)
                passes = recipe.epochs * _fast_time(recipe, ("mixed_precision",))
                passes += 0 if draw in monitored else (2 if recipe.uses_teacher else 1)
                rate = rates["score_choice"] if recipe.uses_teacher else rates["loss"]  # task_loss: one loss pass
                seconds["retraining"] += recipe.monitor_size * passes / rate
                if draw not in monitored and recipe.monitor_source != "task":  # texts sampled per draw
                    seconds["retraining"] += recipe.monitor_size / rates["generate"]
                monitored.add(draw)
        for task in config.tasks():
            if task.limit is None:
                unknown.append(f"scoring {task.name} in every cell (no limit: the whole split)")
                continue
            seconds["scoring"] += task.limit / _scoring_rate(rates, task.name, config.include_path)
    return Estimate([c.id for c in cells], seconds, unknown, notes)


def _target_seconds(config: LeaderboardConfig, strategies, needs, rates: dict[str, float], n: int) -> float:
    """Target texts of the target-matching baselines: sampled once per source (shared by every row
    and seed), then embedded with the pool by θ0 (rds) or the sentence model (gen_knn)."""
    seconds, sources = 0.0, set()
    for s, required in zip(strategies, needs):
        if TARGET_TEXTS not in required:
            continue
        size = {**config.approx, **s.approx}.get("target_size", 256)
        source = config.target_source_for(s.label)
        if source != "task" and source not in sources:
            seconds += size / rates["generate"]
        sources.add(source)
        if BASE_ENCODER in required:
            seconds += (n + size) / rates["loss"]
        if SENTENCE_ENCODER in required:
            seconds += (n + size) / rates["embed_sentence"]
    return seconds


def describe(config: LeaderboardConfig, done: frozenset[str] = frozenset(), only: list[str] | None = None) -> str:
    """The dry-run text: one line per chosen cell in run order (finished ones marked), then the
    cost per part and in total."""
    est = estimate(config, done, only)
    finished = [cell for cell in est.cells if cell in done]
    total = len(config.cells())
    count = f"{len(est.cells)} of {total} cells (--only)" if only else f"{total} cells"
    head = f"leaderboard {config.name!r}: {count} on {config.device}"
    lines = [head + (f", {len(finished)} already finished (skipped by --resume)" if finished else "")]
    lines += [f"  {cell}" + ("  (done)" if cell in done else "") for cell in est.cells]
    rates, _ = _rates(config)
    lines.append("estimated cost (rates: " + ", ".join(f"{k} {v:.3g}/s" for k, v in rates.items()) + "):")
    lines += [f"  {note}" for note in est.notes]
    lines += [f"  {part}: {secs / 60:.1f} min" for part, secs in est.seconds.items()]
    lines.append(f"  total: {est.total / 60:.1f} min" + (" + unknown parts" if est.unknown else ""))
    lines += [f"  not estimated: {what}" for what in dict.fromkeys(est.unknown)]
    return "\n".join(lines)
