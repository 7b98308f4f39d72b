r"""``lm-eval-approx train`` (retrain θ0 on a selection file) and ``lm-eval-approx finetune`` (make a
benchmark's expert θf from true training data): one command, one recipe, two data sources.

    lm-eval-approx train --base smollm2-135m --task approx_agnews --data sel.jsonl --out adapters/sel
    lm-eval-approx finetune --base smollm2-135m --task approx_agnews --data ag_news:train \
        --limit 1000 --out experts/agnews
    lm-eval-approx finetune --base smollm2-135m --task my_task --include-path my_tasks/ \
        --limit 1000 --out experts/my_task      # no --data: the task's own training split

The output folder is a PEFT adapter that ``lm-eval-approx run --model hf --model_args
pretrained=BASE,peft=OUT`` evaluates (or a model folder with ``--method full``). Plain ``lm_eval``
loads it too unless the adapter wraps a head tied to the embeddings (see ``harness/tied_head.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lm_eval_approx.plugins.registry import include_task_folders
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
from lm_eval_approx.training.examples import (
    corpus_examples,
    selection_examples,
    task_examples,
)
from lm_eval_approx.training.recipe import (
    TASK_MONITOR,
    TrainingRecipe,
    add_recipe_arguments,
    recipe_from_args,
)
from lm_eval_approx.training.retraining_rule import rule_for_task
from lm_eval_approx.training.stop_signals import (
    TASK_TEXTS,
    check_teacher,
    monitor_identity,
    monitor_texts,
)

logger = logging.getLogger(__name__)

SELECTION = "selection"
CORPUS = "corpus"


def add_parser(subparsers) -> None:
    for name, source, help_text, data_help in (
        ("train", SELECTION, "retrain a base model on a selection file (JSONL of id, text, label, weight)",
         "selection JSONL file (rows with text, label, weight)"),
        ("finetune", CORPUS, "make a benchmark's expert: train a base model on a corpus with its true labels",
         "corpus spec with true labels for classification tasks, e.g. ag_news:train (default: the "
         "task's own training split, read through lm-eval)"),
    ):
        parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        add = parser.add_argument
        add("--base", required=True, help="base model: folder, hub id, .gguf file or alias (smollm2-135m)")
        add("--task", required=True, help="approximation task whose template renders the examples: a built-in "
            "approx_* task or any lm-eval task (lm-eval-approx tasks --approximable)")
        add("--include-path", action="append", default=[], metavar="DIR",
            help="a folder of lm-eval task YAML in which --task may be defined, repeatable")
        add("--data", required=source == SELECTION, default=None, help=data_help)
        add("--out", required=True, help="output folder (written atomically; reused when it holds this training)")
        add("--limit", type=int, default=None,
            help="use this many examples (selection: the first in pick order; corpus: drawn with --data-seed)")
        if source == CORPUS:
            add("--data-seed", type=int, default=None, help="seed of the corpus draw (default: the recipe seed)")
        add("--recipe", default=None, help="recipe.json to start from (e.g. the expert's); flags override its fields")
        if source == SELECTION:
            add("--retraining-rule", action="store_true",
                help="retrain under the task's retraining rule, as the leaderboard and --model approx do "
                     "(up to 8 epochs; keep the epoch that agrees best with θf, classification, or has the "
                     "lowest task loss, language modelling, on unlabelled texts of the task's training split); "
                     "over --recipe, under the flags")
            add("--finetuned", default=None,
                help="θf (folder, hub id, .gguf file or alias): what a teacher stop signal (task_agreement, "
                     "task_kl, the classification rule) compares the retrained model with")
        add("--no-progress", action="store_true", help="no progress bar")
        add_recipe_arguments(parser)
        parser.set_defaults(func=train_command, data_source=source)


def load_examples(args: argparse.Namespace, spec, seed: int) -> list:
    """The training rows the command line names: a selection file, a corpus with true labels, or
    (finetune without ``--data``) the task's own training split."""
    if args.data_source == SELECTION:
        return selection_examples(args.data, spec, args.limit)
    seed = seed if args.data_seed is None else args.data_seed
    if args.data is None:
        return task_examples(spec, args.limit, seed)
    return corpus_examples(args.data, spec, args.limit, seed)


def train_command(args: argparse.Namespace) -> int:
    from lm_eval_approx.training.loop import (  # torch: only when training
        TRAINING_FILE,
        train_adapter,
    )

    include_task_folders(args.include_path)
    spec = get_task_spec(args.task)
    base_recipe = TrainingRecipe.load(args.recipe) if args.recipe else None
    if getattr(args, "retraining_rule", False):
        base_recipe = TrainingRecipe.from_dict({**(base_recipe or TrainingRecipe()).to_dict(), **rule_for_task(spec)})
    recipe = recipe_from_args(args, base_recipe)
    finetuned = getattr(args, "finetuned", None)
    if finetuned is not None and not recipe.uses_teacher:
        logger.warning("--finetuned is read only by a teacher stop signal (task_agreement, task_kl); this "
                       "training stops on %s and does not use it", recipe.stop_on)
    examples = load_examples(args, spec, recipe.seed)
    probes, monitor = _stop_probes(args.base, finetuned, spec, recipe, examples) if recipe.uses_probe else ((), None)
    out = train_adapter(args.base, spec, examples, recipe, args.out, progress=not args.no_progress,
                        probes=probes, monitor=monitor)
    record = json.loads((out / TRAINING_FILE).read_text(encoding="utf-8"))
    kept = (f"{recipe.stop_on} {record['best_signal']:.4g}" if recipe.uses_probe
            else f"validation loss {record['best_validation_loss']}")
    print(
        f"{out}: {record['n_train']} training / {record['n_validation']} validation examples, "
        f"best epoch {record['best_epoch']} of {record['epochs_run']}, {kept}, "
        f"{record['examples_per_second']:.1f} examples/s",
        file=sys.stdout,
    )
    return 0


def _stop_probes(base: str, finetuned: str | None, spec, recipe: TrainingRecipe, examples: list) -> tuple:
    """The stop signal's probe on texts of the task's training split that were not selected, and
    what identifies it in the training key (the texts' source and θf), so an output folder trained
    against another θf is not reused."""
    from lm_eval_approx.models.loading import model_fingerprint
    from lm_eval_approx.training.stop_signals import stop_probes

    check_teacher(spec, recipe, finetuned)  # before any text is drawn or model loaded
    texts = monitor_texts(spec, recipe, {example.text for example in examples}, models=(base, finetuned))
    probes = stop_probes(spec, recipe, texts, base=base, finetuned=finetuned, max_length=recipe.max_length)
    sampled = recipe.monitor_source != TASK_MONITOR
    monitor = {"corpus": monitor_identity(recipe, TASK_TEXTS),
               **({"finetuned": model_fingerprint(finetuned or base)} if recipe.uses_teacher or sampled else {})}
    return probes, json.dumps(monitor, sort_keys=True)
