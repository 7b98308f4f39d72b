"""Run a leaderboard grid: θ0, the expert and every (strategy, k, seed) cell, each scored by lm-eval.

Every cell ends in ``DIR/results/<cell>.json`` (lm-eval's results schema; our extras under
``config.leaderboard``), written atomically and last, so a cell is finished exactly when its file
exists. ``resume=True`` skips a finished cell whose recorded ``cell_hash`` (a hash of everything
the cell depends on) still matches the config; every approximation reuses the pipeline's cached
stages (labels, features, selection, training), so cells sharing upstream work pay for it once.

Cost columns: ``selection_seconds`` sums the original compute time of the labels, base-loss,
features and selection stages of the cell (from each stage's ``stage.json``, so a stage another
cell computed is still counted: it is what this selection costs from scratch);
``training_seconds`` is the training stage's, plus what a resumed training's checkpoint had clocked
(``training/summary.py`` ``retraining_seconds``).

Every path written or read under DIR goes through ``safe_paths.contained``: a cell id that is not
one plain file name, or a ``results/`` folder, results file or snapshot that is a symlink leading
out of DIR, raises ``PathEscapeError`` instead of being written through.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lm_eval_approx.cache.atomic import write_json_atomic, write_text_atomic
from lm_eval_approx.cache.paths import cache_path
from lm_eval_approx.cache.safe_paths import contained, safe_name
from lm_eval_approx.cache.stages import DONE_FILE
from lm_eval_approx.data.selection_file import read_selection
from lm_eval_approx.data.similarity import dataset_similarity, source_fractions
from lm_eval_approx.features.generation import GENERATION_STAGE
from lm_eval_approx.leaderboard.cell_keys import cell_hash
from lm_eval_approx.leaderboard.cost import selection_cost
from lm_eval_approx.leaderboard.knowledge import row_knowledge
from lm_eval_approx.leaderboard.intervals import per_doc_values
from lm_eval_approx.leaderboard.locks import claim_each, expert_lock_path, held, result_stamp
from lm_eval_approx.heap import release_memory
from lm_eval_approx.harness.lm_eval_cli import shared_task_manager
from lm_eval_approx.leaderboard.config import (
    APPROX,
    DEFAULT_REFERENCE_SIZE,
    EXPERT,
    TASK_DATA,
    THETA0,
    Cell,
    LeaderboardConfig,
)
from lm_eval_approx.models.loading import is_adapter, resolve_model
from lm_eval_approx.pipeline import (
    BASE_LOSS_STAGE,
    FEATURE_STAGE,
    FUSED_STORE_SECONDS,
    LABEL_STAGE,
    SELECTION_STAGE,
    STAGE_ALPHA_SEPARATOR,
    TRAINING_STAGE,
)
from lm_eval_approx.plugins.registry import include_task_folders
from lm_eval_approx.training.examples import corpus_examples, task_examples
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.summary import read_training_history, retraining_seconds, retraining_summary

logger = logging.getLogger(__name__)

RESULTS_DIR = "results"
CONFIG_SNAPSHOT = "leaderboard.json"
EXPERT_DIR = "leaderboard-experts"
SELECTION_STAGES = (LABEL_STAGE, BASE_LOSS_STAGE, FEATURE_STAGE, GENERATION_STAGE, SELECTION_STAGE)
FAST_HF = "approx_hf"


def results_dir(out: str | Path) -> Path:
    """``out/results``, refused when it is a symlink leading out of ``out``."""
    return contained(out, RESULTS_DIR, field="leaderboard results folder")


def results_path(out: str | Path, cell: Cell) -> Path:
    """``out/results/<cell id>.json``; the id must be one plain file name and the file may not be
    a symlink leading out of the results folder."""
    name = f"{safe_name('leaderboard cell', cell.id)}.json"
    return contained(results_dir(out), name, field="leaderboard cell")


def result_files(out: str | Path) -> list[Path]:
    """Every ``out/results/*.json`` in name order, each checked like ``results_path``."""
    folder = results_dir(out)
    return [contained(folder, p.name, field="leaderboard result file") for p in sorted(folder.glob("*.json"))]


def task_versions(names: tuple[str, ...], include_path: list[str] | None = None) -> dict[str, object]:
    """The ``metadata.version`` each named task (or group) declares now, where it declares one."""
    index = shared_task_manager(include_path).task_index
    versions = {}
    for name in names:
        entry = index.get(name)
        version = ((entry.cfg or {}).get("metadata") or {}).get("version") if entry is not None else None
        if version is not None:
            versions[name] = version
    return versions


def _same_version(recorded: Any, current: Any) -> bool:
    """lm-eval writes a version as the YAML gave it (1.0 or "1.0"): compare numbers as numbers."""
    try:
        return float(recorded) == float(current)
    except (TypeError, ValueError):
        return str(recorded) == str(current)


def finished(out: Path, config: LeaderboardConfig, cell: Cell) -> bool:
    """The cell's results JSON exists, has this config's cell hash, and was scored with the task
    versions the tasks declare now: bumping a task's ``metadata.version`` (a fixed prompt or
    target) re-scores the cells that used the old one, while retraining stays cached."""
    path = results_path(out, cell)
    if not path.is_file():
        return False
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("config", {}).get("leaderboard", {}).get("cell_hash") != cell_hash(config, cell):
        return False
    recorded = record.get("versions") or {}
    current = task_versions(tuple(task.name for task in config.tasks()), config.include_path)
    return all(_same_version(recorded.get(name), version) for name, version in current.items())


def finished_cells(out: str | Path, config: LeaderboardConfig, only: list[str] | None = None) -> frozenset[str]:
    """Ids of the cells (those ``only`` chooses) ``--resume`` would skip: their results JSON in
    ``out`` has the same hash (``config`` resolved: a hash records the loaded task)."""
    folder = Path(out)
    return frozenset(cell.id for cell in config.chosen_cells(only) if finished(folder, config, cell))


def expert_model(config: LeaderboardConfig, progress: bool = False) -> str:
    """θf's folder: the given one, or θ0 trained on the true data (cached by its training key)."""

    if config.expert.adapter is not None:
        return resolve_model(config.expert.adapter)
    from lm_eval_approx.training.loop import (  # torch: only to train
        train_adapter,
        training_key,
    )

    spec = config.task_spec
    examples = true_examples(config, spec)
    recipe = config.recipe_for(config.expert.recipe)
    folder = cache_path(EXPERT_DIR, training_key(config.base, spec, examples, recipe), field="expert folder")
    return str(train_adapter(config.base, spec, examples, recipe, folder, progress=progress))


def true_examples(config: LeaderboardConfig, spec) -> list:
    """The expert's training rows: ``expert.size`` documents of ``expert.data`` (or of the task's own
    training split, for ``data: task``) with true labels."""

    if config.expert.data == TASK_DATA:
        return task_examples(spec, config.expert.size, config.expert.seed)
    return corpus_examples(config.expert.data, spec, config.expert.size, config.expert.seed)  # type: ignore[arg-type]  # a trained expert's data


def approx_model_args(config: LeaderboardConfig, cell: Cell, expert: str) -> dict[str, Any]:
    """``--model approx`` arguments of a cell (see approx_model.py)."""

    strategy = config.strategy(cell.label)
    args: dict[str, Any] = {
        "base": resolve_model(config.base), "finetuned": expert, "task": config.task,
        "corpus": config.corpus.spec, "corpus_size": config.corpus.size, "corpus_seed": config.corpus.seed,
        "strategy": strategy.name, "k": cell.k, "seed": cell.seed, **config.approx, **strategy.approx,
    }
    targets = config.target_source_for(cell.label)
    if targets is not None:
        args["target_source"] = targets
    recipe: TrainingRecipe = config.retraining_for(cell.label)
    if config.seed_retraining:  # seeds then measure retraining noise too, for deterministic strategies
        recipe.seed = cell.seed
    for name, value in recipe.to_dict().items():
        args[f"train_{name}"] = "+".join(value) if name == "target_modules" else value
    for name, value in strategy.options.items():
        args[f"strategy_{name}"] = value
    return {k: v for k, v in args.items() if v is not None}


def build_lm(config: LeaderboardConfig, cell: Cell, expert: str) -> tuple[Any, str, dict[str, Any]]:
    """The lm-eval model instance of a cell, its model type and its model args."""
    from lm_eval.api.registry import get_model  # lm-eval: only to score


    base = resolve_model(config.base)
    if cell.kind == THETA0:
        model, args = FAST_HF, {"pretrained": base}
    elif cell.kind == EXPERT:
        model = FAST_HF
        args = {"pretrained": base, "peft": expert} if is_adapter(expert) else {"pretrained": expert}
    else:
        model, args = "approx", approx_model_args(config, cell, expert)
    extra = {"batch_size": config.batch_size, "device": config.device}
    return get_model(model).create_from_arg_obj(dict(args), extra), model, args


def merge_results(parts: list[dict]) -> dict:
    """One lm-eval results dict from several ``simple_evaluate`` calls on one model."""
    merged = dict(parts[0])
    for part in parts[1:]:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "config":
                merged[key] = {**merged[key], **value}
    return merged


def evaluate(config: LeaderboardConfig, lm, manager, on_phase: Callable[[str], None]) -> dict:
    """Score ``lm`` on the target and extra tasks (one lm-eval call per distinct --limit)."""
    import lm_eval  # only to score

    groups: dict[int | None, list[str]] = {}
    for task in config.tasks():
        groups.setdefault(task.limit, []).append(task.name)
    parts = []
    for limit, names in groups.items():
        on_phase("score " + "+".join(names))
        parts.append(lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=manager,
                                             log_samples=True, bootstrap_iters=0))
    return merge_results(parts)


def per_doc_scores(samples: dict, task: str) -> dict[str, dict[str, object]]:
    """The target task's value of every metric for each scored document, by lm-eval doc id (what
    the paired intervals of ``leaderboard/intervals.py`` resample); the samples themselves are not
    kept (they hold every document's text and every response)."""
    out: dict[str, dict[str, object]] = {}
    for sample in samples.get(task, []):
        for metric in sample.get("metrics", []):
            value = per_doc_values(sample, metric)
            if value is not None:
                out.setdefault(metric, {})[str(sample["doc_id"])] = value
    return out


def _stage_seconds(names: tuple[str, ...], keys: dict[str, str]) -> float:
    """Seconds the stages called ``names`` took when computed (``features@1/3``-style labels of
    checkpoint stages count as ``features``), whether or not this cell reused them."""

    total = 0.0
    for label, key in keys.items():
        name = label.split(STAGE_ALPHA_SEPARATOR)[0]
        if name in names:
            done = cache_path("stages", name, key, DONE_FILE, field=f"{label} stage key")
            record = json.loads(done.read_text(encoding="utf-8"))
            total += float(record.get("seconds", 0.0))
            if name == LABEL_STAGE and FEATURE_STAGE in keys and FEATURE_STAGE in names:
                # a fused labels stage timed θf's store too, which the features stage also reports
                total -= float(record.get("info", {}).get(FUSED_STORE_SECONDS, 0.0))
    return total


@dataclass(frozen=True)
class TrueData:
    """What a cell's selection is compared with: the expert's training texts, capped for the
    similarity metrics (``reference``) and all of them as normalised keys (``keys``)."""

    reference: list[str] | None = None
    keys: frozenset[str] | None = None


def text_key(text: str) -> str:
    """A document as compared across corpora: its words joined by single spaces."""
    return " ".join(str(text).split())


def true_data(config: LeaderboardConfig) -> TrueData:
    """The expert's true training texts, when the config says how the expert was made."""

    if config.expert.data is None:
        return TrueData()
    texts = [e.text for e in true_examples(config, config.task_spec)]
    return TrueData(texts[: config.similarity.get("reference_size", DEFAULT_REFERENCE_SIZE)],
                    frozenset(text_key(t) for t in texts))


def cell_extras(config: LeaderboardConfig, cell: Cell, lm, truth: TrueData, expert: str) -> dict:
    """Our ``config.leaderboard`` record: cell identity, costs, and similarity to the true data
    (including ``true_documents``: how many selected documents the expert was trained on, which is
    non-zero only when the candidate pool holds some of its training data), and for a trained model
    ``retraining``: the epoch its stop rule kept, of how many, and the signal's curve."""

    extras: dict[str, Any] = {"cell": cell.id, "kind": cell.kind, "label": cell.label or cell.kind,
                              "k": cell.k, "seed": cell.seed, "cell_hash": cell_hash(config, cell),
                              "target": config.task, "metric": config.metric,
                              "limits": {t.name: t.limit for t in config.tasks()},
                              "knew": row_knowledge(config, cell)}
    if cell.kind == EXPERT:
        history = read_training_history(expert)
        if history is not None:
            extras["training_seconds"] = history.train_seconds
            extras["retraining"] = retraining_summary(history)
    if cell.kind != APPROX:
        return extras
    info = lm.get_model_info()["approx"]
    history = read_training_history(info["adapter"]) if info.get("adapter") else None
    if history is not None:
        extras["retraining"] = retraining_summary(history)
    extras["strategy"] = config.strategy(cell.label).name
    extras["selection_seconds"] = round(_stage_seconds(SELECTION_STAGES, info["stage_keys"]), 3)
    extras["training_seconds"] = round(retraining_seconds(_stage_seconds((TRAINING_STAGE,), info["stage_keys"]),
                                                          history), 3)
    extras["selection_cost"] = selection_cost(config, cell, info["stage_keys"])
    rows = read_selection(info["selection_file"])
    extras["sources"] = source_fractions([r.source for r in rows])
    if any(r.label_text is not None for r in rows):  # classification: θf's pseudo-labels of the selection
        extras["labels"] = source_fractions([r.label_text for r in rows])
    if truth.keys is not None:
        extras["true_documents"] = sum(text_key(r.text) in truth.keys for r in rows)
    if truth.reference:
        report = dataset_similarity([r.text for r in rows], truth.reference,
                                    embed=bool(config.similarity.get("embed", True)))
        extras["similarity"] = {k: v for k, v in report.to_dict().items() if k != "source_fractions"}
    return extras


def run_cell(config: LeaderboardConfig, cell: Cell, out: Path, expert: str, manager,
             truth: TrueData, on_phase: Callable[[str], None]) -> Path:
    """Build, score and record one cell; its results JSON is written last, atomically."""
    from lm_eval.utils import handle_non_serializable  # lm-eval: only to score

    started = time.perf_counter()
    on_phase("select+train" if cell.kind == APPROX else "load")
    lm, model, args = build_lm(config, cell, expert)
    results = evaluate(config, lm, manager, on_phase)
    per_doc = per_doc_scores(results.pop("samples", None) or {}, config.task)
    results["config"]["model"] = model
    results["config"]["model_args"] = ",".join(f"{k}={v}" for k, v in args.items())
    results["config"]["leaderboard"] = {**cell_extras(config, cell, lm, truth, expert),
                                        "wall_seconds": round(time.perf_counter() - started, 3),
                                        "per_doc": per_doc}
    del lm
    release_memory()  # the next cell starts from what is still referenced, not this one's peak
    path = results_path(out, cell)
    write_text_atomic(path, json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    return path


def resolve_for_run(config: LeaderboardConfig) -> LeaderboardConfig:
    """``config`` resolved, its include folders added to this process's task folders: lm-eval builds
    a cell's ``approx`` model from string arguments, and that model finds its task through them
    alone (as under ``run --include_path``). Planning (a dry run) resolves without this."""
    config = config.resolve()
    include_task_folders(config.include_path)
    return config


def run_leaderboard(config: LeaderboardConfig, out: str | Path, resume: bool = False,
                    progress: bool = True, only: list[str] | None = None, executor=None) -> list[Path]:
    """Run every unfinished cell (all cells without ``resume``) that ``only`` chooses (every cell
    without it; see ``LeaderboardConfig.chosen_cells``), in that order, and return their results
    paths. Cells left out keep whatever results they have.

    ``executor`` (``leaderboard/executors.py``) runs each cell in a process of its own, θf and θ0
    first; without it the cells run here, one after another. Either way a cell runs under its lock
    (``leaderboard/locks.py``): one that another worker on the same folder is running is left to
    it and waited for at the end (and taken over if that worker died), and one another worker
    finished since the plan was made is not scored again (that would cost an evaluation and
    overwrite its recorded costs with a cache hit's)."""
    out = Path(out)
    for cell in config.cells():
        results_path(out, cell)  # every cell's file name is checked before anything is computed
    config = resolve_for_run(config)
    cells = config.chosen_cells(only)
    results_dir(out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(contained(out, CONFIG_SNAPSHOT, field="leaderboard snapshot"), config.to_dict())
    todo = [c for c in cells if not (resume and finished(out, config, c))]
    planned = {c.id: result_stamp(results_path(out, c)) for c in todo}
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=config.name, unit="cell", disable=not progress)
    if todo and executor is not None:
        executor.run(config, out, todo, resume=resume, planned=planned, on_done=lambda: bar.update(1),
                     on_phase=bar.set_postfix_str)
    elif todo:
        manager = shared_task_manager(config.include_path)
        bar.set_postfix_str("expert")
        with held(expert_lock_path(cache_path(EXPERT_DIR, field="expert folder"), config)):
            expert = expert_model(config, progress=False)
        truth = true_data(config)

        def done(cell: Cell) -> bool:
            return finished(out, config, cell) and (resume or result_stamp(results_path(out, cell)) != planned[cell.id])

        def run(cell: Cell) -> None:
            run_cell(config, cell, out, expert, manager, truth, lambda phase: bar.set_postfix_str(f"{cell.id}: {phase}"))

        claim_each(out, todo, done, run, on_done=lambda: bar.update(1), on_phase=bar.set_postfix_str)
    bar.close()
    return [results_path(out, c) for c in cells]
