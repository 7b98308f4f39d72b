"""``--dry-run``: the planned cells and a rough cost, from throughput rates per device.

seconds ≈ expert_docs·epochs / r_train + N·(1/r_label + [base loss] 1/r_label + [features] M/r_feat)
          + Σ_cells k·epochs / r_train + Σ_cells Σ_tasks limit / r_score(task),

with N the candidate count, M the synthetic checkpoints of a feature set (each distinct feature
set is extracted once and shared by the strategies using it), and epochs the recipe's maximum (early
stopping only shortens it). The CPU rates were measured with SmolLM2-135M on two cores; the GPU rates
are an assumed speed-up, so the GPU figure is an order of magnitude, not a promise.

With ``--only PATTERN`` only the matching cells are planned (and only the feature sets their
strategies need). With ``--resume --out DIR`` the cells already finished in DIR (same cell hash) are listed as done
and left out of the retraining and scoring parts; the expert and the labels/features stay in the
estimate, because whether their cached stages survive is only known once the run looks them up.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import APPROX, LeaderboardConfig

CPU_RATES = {"train": 2.5, "label": 20.0, "features": 10.0, "score_choice": 3.0, "score_text": 1.0}
GPU_SPEEDUP = 40.0
CLASSIFICATION_PREFIX = "approx_agnews"


@dataclass
class Estimate:
    """Planned cells and estimated seconds per part."""

    cells: list[str]
    seconds: dict[str, float]
    unknown: list[str]

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _rates(device: str) -> dict[str, float]:
    scale = 1.0 if device == "cpu" else GPU_SPEEDUP
    return {name: rate * scale for name, rate in CPU_RATES.items()}


def estimate(config: LeaderboardConfig, done: frozenset[str] = frozenset(),
             only: list[str] | None = None) -> Estimate:
    """Seconds for expert training, labels/features, and retraining and scoring of every cell
    chosen by ``only`` (all without it) and not in ``done`` (cell ids)."""
    from ..registry import strategy_registry
    from ..strategies.base import FEATURES, LOSS_BASE

    rates = _rates(config.device)
    unknown: list[str] = []
    seconds = {"expert": 0.0, "labels+features": 0.0, "retraining": 0.0, "scoring": 0.0}
    if config.expert.data is not None:
        if config.expert.size is None:
            unknown.append("expert training (expert.size is null: the whole corpus)")
        else:
            epochs = config.recipe_for(config.expert.recipe).epochs
            seconds["expert"] = config.expert.size * epochs / rates["train"]
    cells = config.chosen_cells(only)
    labels = {cell.label for cell in cells if cell.kind == APPROX and cell.id not in done}
    strategies = [s for s in config.strategies if s.label in labels]
    n = config.corpus.size
    if n is None:
        unknown.append("labels and features (corpus.size is null: the whole corpus)")
    elif strategies:
        seconds["labels+features"] = n / rates["label"]
        needs = [strategy_registry().get(s.name).obj.requires for s in strategies]
        if any(LOSS_BASE in r for r in needs):
            seconds["labels+features"] += n / rates["label"]
        feature_sets = {
            (s.approx.get("params", config.approx.get("params", "head")),
             s.approx.get("checkpoints", config.approx.get("checkpoints", 1)))
            for s, r in zip(strategies, needs) if FEATURES in r
        }
        seconds["labels+features"] += sum(n * m / rates["features"] for _, m in feature_sets)
    for cell in cells:
        if cell.id in done:
            continue
        if cell.kind == APPROX:
            epochs = config.recipe_for(config.strategy(cell.label).recipe).epochs
            seconds["retraining"] += cell.k * epochs / rates["train"]
        for task in config.tasks():
            if task.limit is None:
                unknown.append(f"scoring {task.name} in every cell (no limit: the whole split)")
                continue
            rate = rates["score_choice"] if task.name.startswith(CLASSIFICATION_PREFIX) else rates["score_text"]
            seconds["scoring"] += task.limit / rate
    return Estimate([c.id for c in cells], seconds, unknown)


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
    lines.append("estimated cost (rates: " + ", ".join(f"{k} {v:g}/s" for k, v in _rates(config.device).items()) + "):")
    lines += [f"  {part}: {secs / 60:.1f} min" for part, secs in est.seconds.items()]
    lines.append(f"  total: {est.total / 60:.1f} min" + (" + unknown parts" if est.unknown else ""))
    lines += [f"  not estimated: {what}" for what in dict.fromkeys(est.unknown)]
    return "\n".join(lines)
