"""Accuracy and stop signals against retraining epochs, for the cells of a leaderboard config.

For each cell (a strategy label of the config, k, seed) the selection is taken from the cached
pipeline (``pipeline.run_selection``, the same stages as the leaderboard), then θ0 is retrained on
it for a fixed number of epochs with no early stop, and after every epoch (and before the first)
these are recorded:

* ``validation_loss``: the recipe's held-out share of the selection, on θf's pseudo-labels;
* ``teacher_kl`` / ``teacher_agreement``: against θf on held-out, unselected pool documents
  (``training/probes.py``; the signals a user can compute);
* ``dev_accuracy``: true-label accuracy on development documents of the task's *training* data
  that the expert never saw (for classification configs whose expert is made from true data);
* ``dev_teacher_kl`` / ``dev_teacher_agreement``: the teacher signals on those development
  documents (their texts only), i.e. on the task's own distribution instead of the pool's, from the
  same pass as ``dev_accuracy``.
  The test split is never touched: the retraining rule is chosen from these curves and only then
  scored on test by the leaderboard.

Every cell writes ``OUT/<label>-k<k>-s<seed>.json`` when done; training checkpoints every epoch in
``OUT/.work``, so an interrupted run resumes where it stopped (run the same command again).

    python benchmarks/epoch_curves.py --config results/cpu/agnews.yaml --out results/cpu/agnews/epochs \\
        --cell select_2ep:300:0:8 --cell random_2ep:300:0:8
    python benchmarks/epoch_curves.py --out results/cpu/agnews/epochs --plot results/cpu/agnews/epochs.png
    python benchmarks/epoch_curves.py --out results/cpu/agnews/epochs --rules     # what each rule would keep

``--rules`` replays the training loop's stopping rule (``training/loop.py``: strict improvement,
patience counted from the best epoch, θ0 a candidate only under a teacher signal) on every recorded
curve, finished or partial, for each signal and patience, at the cap the curve was run with, and
prints the epoch each rule keeps and that epoch's development accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

SIGNALS = ("validation_loss", "teacher_kl", "teacher_agreement", "dev_teacher_kl", "dev_teacher_agreement",
           "dev_accuracy")


def parse_cell(text: str) -> tuple[str, int, int, int]:
    """``LABEL:K:SEED:EPOCHS`` → its four parts (a bad one exits with a message naming the form)."""
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        raise SystemExit(f"--cell {text!r}: expected LABEL:K:SEED:EPOCHS, e.g. select_2ep:300:0:8")
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3])


def dev_documents(config, spec, size: int, seed: int) -> tuple[list[str], list[int]]:
    """``size`` true-label documents of the expert's data that the expert was not trained on."""
    import numpy as np

    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.leaderboard.runner import true_examples

    seen = {row.text for row in true_examples(config, spec)}
    corpus = load_corpus(config.expert.data)
    free = [i for i, text in enumerate(corpus.texts) if text not in seen and corpus.labels[i] is not None]
    keep = np.sort(np.random.default_rng(seed).choice(len(free), size=min(size, len(free)), replace=False))
    return [corpus.texts[free[i]] for i in keep], [int(corpus.labels[free[i]]) for i in keep]


def run_cell(config, expert: str, cell: tuple[str, int, int, int], out: Path, dev, monitor_size: int,
             batch_size: int) -> dict:
    from lm_eval_approx.harness.approx_model import split_model_args
    from lm_eval_approx.leaderboard.config import APPROX, Cell
    from lm_eval_approx.leaderboard.runner import approx_model_args
    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.pipeline import run_selection
    from lm_eval_approx.training.loop import train_model
    from lm_eval_approx.training.probes import held_out_texts, teacher_probes
    from lm_eval_approx.training.recipe import VALIDATION_LOSS

    label, k, seed, epochs = cell
    cell_id = f"{label}-k{k}-s{seed}"
    args = approx_model_args(config, Cell(cell_id, APPROX, label, k, seed), expert)
    approx, recipe, _ = split_model_args(dict(args))
    # Fixed epochs, no early stop, on the validation loss: a curve records every signal, and these
    # fields keep the recipe (and the resume key) the curves were first run with.
    recipe.epochs, recipe.patience, recipe.stop_on = epochs, 0, VALIDATION_LOSS
    selected = run_selection(approx)
    spec = selected.spec
    tokenizer = load_tokenizer(approx.base)
    monitor = held_out_texts(selected.corpus.texts, selected.corpus.ids, {r.id for r in selected.rows},
                             monitor_size, recipe.seed)
    teacher = load_model(approx.finetuned)
    probes = [teacher_probes(teacher, tokenizer, spec, monitor, batch_size, approx.extract_max_length)]
    if dev is not None:
        probes.append(teacher_probes(teacher, tokenizer, spec, dev[0], batch_size, approx.extract_max_length,
                                     names=("dev_teacher_kl", "dev_teacher_agreement"), labels=dev[1],
                                     accuracy_name="dev_accuracy"))
    del teacher

    def report(epoch: int, history: dict) -> None:
        values = {name: history["probes"][name][-1] for name in history["probes"]}
        print(f"{cell_id} epoch {epoch}: validation_loss {history['validation_loss'][-1]:.4f} "
              + " ".join(f"{n} {v:.4f}" for n, v in values.items()), flush=True)
        # The curves so far, so an interrupted cell still reports what it measured.
        partial = {"cell": cell_id, "strategy": approx.strategy, "k": k, "seed": seed, "epochs_done": epoch,
                   "curves": {"validation_loss": [history["initial_validation_loss"], *history["validation_loss"]],
                              **history["probes"]}}
        (out / f"{cell_id}.partial.json").write_text(json.dumps(partial, indent=2) + "\n", encoding="utf-8")

    began = time.perf_counter()
    result = train_model(approx.base, spec, selected.rows, recipe, out / ".work" / cell_id, progress=False,
                         on_epoch_end=report, probes=probes)
    history = result.history
    record = {
        "cell": cell_id, "label": label, "strategy": approx.strategy, "k": k, "seed": seed, "epochs": epochs,
        "recipe": recipe.to_dict(), "monitor_size": len(monitor), "dev_size": len(dev[0]) if dev else 0,
        "curves": {"validation_loss": [history["initial_validation_loss"], *history["validation_loss"]],
                   **history["probes"]},
        "train_loss": history["train_loss"], "train_seconds": history["train_seconds"],
        "probe_seconds": history["probe_seconds"], "wall_seconds": time.perf_counter() - began,
        "selection_label_counts": _label_counts(selected.rows, spec.num_classes),
    }
    (out / f"{cell_id}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / f"{cell_id}.partial.json").unlink(missing_ok=True)
    return record


def _label_counts(rows, classes: int) -> list[int]:
    counts = [0] * classes
    for row in rows:
        if row.label is not None:
            counts[row.label] += 1
    return counts


def plot(out: Path, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.json"))
               if not p.name.endswith(".partial.json")]
    if not records:
        raise SystemExit(f"no finished cells in {out}")
    fig, axes = plt.subplots(1, len(SIGNALS), figsize=(4.2 * len(SIGNALS), 3.6))
    for ax, name in zip(axes, SIGNALS):
        for rec in records:
            values = rec["curves"].get(name)
            if values:
                style = "-" if rec["strategy"] == "select" else "--"
                ax.plot(range(len(values)), values, style, marker="o", ms=3, label=f"{rec['strategy']} k={rec['k']}")
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("epochs of retraining (0 = θ0)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    print(f"wrote {target}")


# (signal, higher is better, θ0 is a candidate): the stop signals a recipe can use, and the same
# teacher signals on development documents for comparison.
RULE_SIGNALS = (("validation_loss", False, False), ("teacher_kl", False, True), ("teacher_agreement", True, True),
                ("dev_teacher_kl", False, True), ("dev_teacher_agreement", True, True))
PATIENCES = (1, 2, 3, 0)


def kept_epoch(values: list[float], higher_better: bool, theta0_candidate: bool, patience: int) -> int:
    """The epoch (0 = θ0) the training loop keeps on a curve ``values`` (index = epoch), as it would
    have stopped with ``patience`` (0: never early)."""
    from lm_eval_approx.training.probes import improves

    best_epoch, best = (0, values[0]) if theta0_candidate else (0, None)
    for epoch in range(1, len(values)):
        if improves(higher_better, values[epoch], best):
            best_epoch, best = epoch, values[epoch]
        elif patience and epoch - best_epoch >= patience:
            break
    return best_epoch


def rule_table(out: Path) -> str:
    """Markdown: per curve and rule, the kept epoch and its development accuracy."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.json"))]
    lines = ["| cell | epochs | signal | " + " | ".join(f"patience {p or '∞'}" for p in PATIENCES) + " | best dev acc |",
             "|---|---|---|" + "---|" * len(PATIENCES) + "---|"]
    for rec in records:
        curves, dev = rec["curves"], rec["curves"].get("dev_accuracy")
        if not dev:
            continue
        n = len(dev)
        top = max(range(n), key=lambda e: dev[e])
        for name, higher, theta0 in RULE_SIGNALS:
            values = curves.get(name)
            if not values or len(values) != n:
                continue
            cells = []
            for patience in PATIENCES:
                epoch = kept_epoch(values, higher, theta0, patience)
                cells.append(f"{epoch}: {dev[epoch]:.3f}")
            lines.append(f"| {rec['cell']} | {n - 1} | {name} | " + " | ".join(cells) + f" | {top}: {dev[top]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="leaderboard config whose stages and expert the cells use")
    parser.add_argument("--out", required=True, help="folder of the per-cell JSONs")
    parser.add_argument("--cell", action="append", default=[], help="LABEL:K:SEED:EPOCHS (repeatable)")
    parser.add_argument("--dev-size", type=int, default=300)
    parser.add_argument("--dev-seed", type=int, default=1)
    parser.add_argument("--monitor-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--plot", help="write the curves of every finished cell in --out to this PNG")
    parser.add_argument("--rules", action="store_true", help="print what each stop rule keeps on every curve in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = [parse_cell(c) for c in args.cell]
    if cells:
        if not args.config:
            raise SystemExit("--cell needs --config")
        from lm_eval_approx.leaderboard.runner import expert_model
        from lm_eval_approx.leaderboard.sources import load_config
        from lm_eval_approx.tasks.kinds import CLASSIFICATION
        from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

        config = load_config(args.config)
        spec = get_task_spec(config.task)
        expert = expert_model(config, progress=False)
        dev = (dev_documents(config, spec, args.dev_size, args.dev_seed)
               if spec.kind == CLASSIFICATION and config.expert.data else None)
        for cell in cells:
            done = out / f"{cell[0]}-k{cell[1]}-s{cell[2]}.json"
            if done.is_file():
                print(f"{done.name}: done already")
                continue
            record = run_cell(config, expert, cell, out, dev, args.monitor_size, args.batch_size)
            print(f"{record['cell']}: {record['wall_seconds']:.0f} s")
    if args.plot:
        plot(out, Path(args.plot))
    if args.rules:
        print(rule_table(out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
