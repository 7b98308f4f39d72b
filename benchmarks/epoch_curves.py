"""Development accuracy (or loss) and stop signals against retraining epochs, for the cells of a leaderboard config.

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
  same pass as ``dev_accuracy``;
* ``dev_loss`` (language-modelling configs, which have no accuracy): the task loss on development
  texts of the task's training data that the expert never saw, picked as the classification
  documents are (their labels unused); the signal the task-text rule (``task_loss``) reads, on the
  task's own distribution;
* with ``--sampled SOURCE`` (repeatable: finetuned, base, contrast), the weights condition's signals
  on ``--monitor-size`` texts sampled from the weights alone with the cell's retraining seed
  (``features/generation.py``, the leaderboard's cached draw): ``<source>_kl`` /
  ``<source>_agreement`` against θf (classification), or ``<source>_loss``, the task loss on the
  samples (language modelling).
  The test split is never touched: the retraining rule is chosen from these curves and only then
  scored on test by the leaderboard.

θf and the samplers run on the config's ``device`` in its ``extract_dtype``, as the pipeline's stop
probes do. Every cell writes ``OUT/<label>-k<k>-s<seed>.json`` when done (``monitor_size``: the
held-out pool documents the teacher signals were measured on; ``sampled_sizes``: the samples);
training checkpoints every epoch in ``OUT/.work``, so an interrupted run resumes where it stopped
(run the same command again).

    python benchmarks/epoch_curves.py --config results/cpu/agnews.yaml --out results/cpu/agnews/epochs \\
        --cell select_2ep:300:0:8 --cell random_2ep:300:0:8
    python benchmarks/epoch_curves.py --out results/cpu/agnews/epochs --plot results/cpu/agnews/epochs.png
    python benchmarks/epoch_curves.py --out results/cpu/agnews/epochs --rules     # what each rule would keep
    python benchmarks/epoch_curves.py --config results/cpu/agnews_weights.yaml \\
        --out results/cpu/agnews_weights/epochs --cell select:300:0:8 --cell random:300:0:8 \\
        --sampled finetuned --sampled base --sampled contrast
    python benchmarks/epoch_curves.py --config results/cpu/msmarco_weights.yaml \\
        --out results/cpu/msmarco_weights/epochs --cell select:300:0:8 --cell random:300:0:8 \\
        --sampled finetuned --sampled base --sampled contrast

``--rules`` replays the training loop's stopping rule (``training/loop.py``: strict improvement,
patience counted from the best epoch, θ0 a candidate only under a probe signal) on every recorded
curve, finished or partial, for each signal and patience, at the cap the curve was run with, and
prints the epoch each rule keeps and that epoch's development accuracy; for language-modelling curves,
a second table gives the kept epoch's development loss (lower is better) instead.
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
DEV_LOSS = "dev_loss"  # a language-modelling curve's development measure (it has no accuracy)
SAMPLED_SOURCES = ("finetuned", "base", "contrast")  # features/generation.py's SOURCES


def sampled_signals(source: str, classification: bool) -> tuple[str, ...]:
    """The curves ``--sampled source`` records: θf's KL and agreement on the samples
    (classification), or the task loss on them (language modelling)."""
    return (f"{source}_kl", f"{source}_agreement") if classification else (f"{source}_loss",)


# Every signal a curve may have besides SIGNALS, in the order the plot and the rules show them.
EXTRA_SIGNALS = (DEV_LOSS, *(name for source in SAMPLED_SOURCES for kind in (True, False)
                             for name in sampled_signals(source, kind)))


def parse_cell(text: str) -> tuple[str, int, int, int]:
    """``LABEL:K:SEED:EPOCHS`` → its four parts (a bad one exits with a message naming the form)."""
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        raise SystemExit(f"--cell {text!r}: expected LABEL:K:SEED:EPOCHS, e.g. select_2ep:300:0:8")
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3])


def dev_documents(config, spec, size: int, seed: int) -> tuple[list[str], list[int] | None]:
    """``size`` true-label documents of the expert's data that the expert was not trained on; for a
    language-modelling task, ``size`` such texts and no labels."""
    import numpy as np

    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.leaderboard.runner import true_examples
    from lm_eval_approx.tasks.kinds import CLASSIFICATION

    labelled = spec.kind == CLASSIFICATION
    seen = {row.text for row in true_examples(config, spec)}
    corpus = load_corpus(config.expert.data)
    free = [i for i, text in enumerate(corpus.texts)
            if text not in seen and (corpus.labels[i] is not None or not labelled)]
    keep = np.sort(np.random.default_rng(seed).choice(len(free), size=min(size, len(free)), replace=False))
    texts = [corpus.texts[free[i]] for i in keep]
    return texts, [int(corpus.labels[free[i]]) for i in keep] if labelled else None


def run_cell(config, expert: str, cell: tuple[str, int, int, int], out: Path, dev, monitor_size: int,
             batch_size: int, sampled: tuple[str, ...] = (), sample_tokens: int | None = None) -> dict:
    from lm_eval_approx.features.generation import GenerationSettings, generated_texts
    from lm_eval_approx.harness.approx_model import split_model_args
    from lm_eval_approx.leaderboard.config import APPROX, Cell
    from lm_eval_approx.leaderboard.runner import approx_model_args
    from lm_eval_approx.models.devices import DEFAULT_DTYPE
    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.pipeline import run_selection
    from lm_eval_approx.tasks.kinds import CLASSIFICATION
    from lm_eval_approx.training.loop import train_model
    from lm_eval_approx.training.probes import held_out_texts, loss_probe, teacher_probes
    from lm_eval_approx.training.recipe import TASK_MONITOR, VALIDATION_LOSS

    label, k, seed, epochs = cell
    cell_id = f"{label}-k{k}-s{seed}"
    args = approx_model_args(config, Cell(cell_id, APPROX, label, k, seed), expert)
    approx, recipe, _ = split_model_args(dict(args))
    # Fixed epochs, no early stop, on the validation loss: a curve records every signal, and these
    # fields keep the recipe (and the resume key) the curves were first run with. A rule that monitors
    # sampled texts (the weights condition) is recorded under --sampled's names instead.
    recipe.epochs, recipe.patience, recipe.stop_on = epochs, 0, VALIDATION_LOSS
    recipe.monitor_source = TASK_MONITOR
    selected = run_selection(approx)
    spec = selected.spec
    classification = spec.kind == CLASSIFICATION
    tokenizer = load_tokenizer(approx.base)
    # The weights condition's monitor texts: the leaderboard's draw (generation stage) when the size,
    # the generation settings and the dtype are its own. θf and the samplers run where the
    # pipeline's stop probes run them: the config's device, in its extract_dtype.
    placement = {"device": approx.device, "dtype": approx.extract_dtype}
    settings = {} if sample_tokens is None else {"max_new_tokens": sample_tokens}
    samples = {source: generated_texts(approx.base, approx.finetuned, spec, monitor_size, recipe.seed,
                                       GenerationSettings(source=source, **settings),
                                       add_bos_token=approx.add_bos_token, **placement)[0]
               for source in sampled}
    max_length = approx.extract_max_length
    monitor_texts, probes = [], []  # the teacher signals' held-out pool documents (none: language modelling)
    if classification:
        monitor_texts = held_out_texts(selected.corpus.texts, selected.corpus.ids, {r.id for r in selected.rows},
                                       monitor_size, recipe.seed)
        teacher = load_model(approx.finetuned, approx.extract_dtype, approx.device)
        probes.append(teacher_probes(teacher, tokenizer, spec, monitor_texts, batch_size, max_length))
        if dev is not None:
            probes.append(teacher_probes(teacher, tokenizer, spec, dev[0], batch_size, max_length,
                                         names=("dev_teacher_kl", "dev_teacher_agreement"), labels=dev[1],
                                         accuracy_name="dev_accuracy"))
        for source, texts in samples.items():
            probes.append(teacher_probes(teacher, tokenizer, spec, texts, batch_size, max_length,
                                         approx.add_bos_token, names=sampled_signals(source, True)))
        del teacher
    else:
        if dev is not None:
            probes.append(loss_probe(spec, dev[0], batch_size, max_length, approx.add_bos_token, name=DEV_LOSS))
        for source, texts in samples.items():
            probes.append(loss_probe(spec, texts, batch_size, max_length, approx.add_bos_token,
                                     name=sampled_signals(source, False)[0]))

    def report(epoch: int, history) -> None:
        values = {name: curve[-1] for name, curve in history.probes.items()}
        losses = history.validation_loss
        print(f"{cell_id} epoch {epoch}: " + (f"validation_loss {losses[-1]:.4f} " if losses else "")
              + " ".join(f"{n} {v:.4f}" for n, v in values.items()), flush=True)
        # The curves so far, so an interrupted cell still reports what it measured.
        partial = {"cell": cell_id, "strategy": approx.strategy, "k": k, "seed": seed, "epochs_done": epoch,
                   "curves": {"validation_loss": [history.initial_validation_loss, *history.validation_loss],
                              **history.probes}}
        (out / f"{cell_id}.partial.json").write_text(json.dumps(partial, indent=2) + "\n", encoding="utf-8")

    began = time.perf_counter()
    # A checkpoint records the probes it was measured with: one made with other --sampled sources is not
    # resumed (its curves would lack epochs); without --sampled the key is the one it always was.
    # So does a dtype other than float32 (θf's distributions and the samples differ under it).
    resume_key = None
    if sampled:
        resume_key = "sampled:" + "+".join(sampled) + (f":{sample_tokens}" if sample_tokens else "")
        resume_key += "" if approx.extract_dtype == DEFAULT_DTYPE else f":{approx.extract_dtype}"
    result = train_model(approx.base, spec, selected.rows, recipe, out / ".work" / cell_id, progress=False,
                         on_epoch_end=report, probes=probes, monitor=resume_key)
    history = result.history
    record = {
        "cell": cell_id, "label": label, "strategy": approx.strategy, "k": k, "seed": seed, "epochs": epochs,
        "recipe": recipe.to_dict(), "monitor_size": len(monitor_texts), "dev_size": len(dev[0]) if dev else 0,
        "curves": {"validation_loss": [history.initial_validation_loss, *history.validation_loss],
                   **history.probes},
        "train_loss": history.train_loss, "train_seconds": history.train_seconds,
        "probe_seconds": history.probe_seconds, "wall_seconds": time.perf_counter() - began,
        "selection_label_counts": _label_counts(selected.rows, spec.num_classes),
    }
    if samples:
        record["sampled_sizes"] = {source: len(texts) for source, texts in samples.items()}
        if sample_tokens is not None:
            record["sample_tokens"] = sample_tokens
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
    names = plotted_signals([rec["curves"] for rec in records])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    axes = axes[0]
    for ax, name in zip(axes, names):
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


def plotted_signals(curves: list[dict]) -> list[str]:
    """The panels: every one of SIGNALS when a curve is a classification one (a language-modelling
    folder has only ``validation_loss`` of them), then each other signal some curve has."""
    base = SIGNALS if any(name in c for c in curves for name in SIGNALS[1:]) or not curves else SIGNALS[:1]
    return [*base, *(name for name in EXTRA_SIGNALS if any(name in c for c in curves))]


# (signal, higher is better, θ0 is a candidate): the stop signals a recipe can use, and the same
# teacher signals on development documents for comparison.
RULE_SIGNALS = (("validation_loss", False, False), ("teacher_kl", False, True), ("teacher_agreement", True, True),
                ("dev_teacher_kl", False, True), ("dev_teacher_agreement", True, True))
# The weights condition's signals on sampled texts (--sampled), and a language-modelling curve's task
# loss on development texts (the task-text rule's signal), all with θ0 a candidate as a probe signal.
EXTRA_RULE_SIGNALS = tuple((name, name.endswith("_agreement"), True) for name in EXTRA_SIGNALS)
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
    """Markdown: per curve and rule, the kept epoch and its development accuracy; language-modelling
    curves (``dev_loss``, no accuracy) in a second table, with the kept epoch's development loss."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.json"))]
    has = {name: any(rec["curves"].get(name) for rec in records) for name in ("dev_accuracy", DEV_LOSS)}
    tables = []
    if has["dev_accuracy"] or not has[DEV_LOSS]:
        tables.append(_rule_rows(records, "dev_accuracy", True, "best dev acc"))
    if has[DEV_LOSS]:
        tables.append(_rule_rows(records, DEV_LOSS, False, "best dev loss"))
    return "\n".join(tables)


def _rule_rows(records: list[dict], target: str, higher: bool, title: str) -> str:
    """One markdown table: for each curve with ``target``, each signal and patience, the kept epoch
    and its ``target`` value, then the epoch with the best ``target`` (higher or lower is better)."""
    lines = ["| cell | epochs | signal | " + " | ".join(f"patience {p or '∞'}" for p in PATIENCES) + f" | {title} |",
             "|---|---|---|" + "---|" * len(PATIENCES) + "---|"]
    for rec in records:
        curves, dev = rec["curves"], rec["curves"].get(target)
        if not dev:
            continue
        n = len(dev)
        top = (max if higher else min)(range(n), key=lambda e: dev[e])
        for name, signal_higher, theta0 in (*RULE_SIGNALS, *EXTRA_RULE_SIGNALS):
            values = curves.get(name)
            if not values or len(values) != n:
                continue
            cells = []
            for patience in PATIENCES:
                epoch = kept_epoch(values, signal_higher, theta0, patience)
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
    parser.add_argument("--monitor-size", type=int, default=256,
                        help="held-out pool documents of the teacher signals, and texts sampled per --sampled source")
    parser.add_argument("--sampled", action="append", default=[], choices=SAMPLED_SOURCES, metavar="SOURCE",
                        help="also record the signals on texts sampled from the weights by SOURCE (finetuned, base, "
                             "contrast; repeatable): <source>_kl and <source>_agreement against θf, or <source>_loss "
                             "for a language-modelling task")
    # Shorter samples than the leaderboard's (a smoke test's): another generation stage, not its draw.
    parser.add_argument("--sample-tokens", type=int, help=argparse.SUPPRESS)
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
        from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

        config = load_config(args.config)
        spec = get_task_spec(config.task)
        expert = expert_model(config, progress=False)
        dev = dev_documents(config, spec, args.dev_size, args.dev_seed) if config.expert.data else None
        for cell in cells:
            done = out / f"{cell[0]}-k{cell[1]}-s{cell[2]}.json"
            if done.is_file():
                print(f"{done.name}: done already")
                continue
            record = run_cell(config, expert, cell, out, dev, args.monitor_size, args.batch_size,
                              tuple(dict.fromkeys(args.sampled)), args.sample_tokens)
            print(f"{record['cell']}: {record['wall_seconds']:.0f} s")
    if args.plot:
        plot(out, Path(args.plot))
    if args.rules:
        print(rule_table(out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
