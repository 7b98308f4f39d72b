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

A probe stop signal loads θf (its teacher distribution) or samples monitor texts from θ0 and θf;
those models run on ``--device`` in ``--dtype``, as the pipeline's do on its ``device`` and
``extract_dtype``, and a dtype other than float32 is part of the training key.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lm_eval_approx.models.devices import (
    CPU,
    DEFAULT_DTYPE,
    DEVICES_ACCEPTED,
    DTYPES,
    check_device,
    check_device_available,
    check_dtype,
)
from lm_eval_approx.plugins.registry import include_task_folders
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
from lm_eval_approx.training.examples import (
    corpus_examples,
    selection_examples,
    task_examples,
)
from lm_eval_approx.training.recipe import (
    TrainingRecipe,
    add_recipe_arguments,
    recipe_from_args,
)
from lm_eval_approx.training.retraining_rule import rule_for_task
from lm_eval_approx.training.stop_signals import (
    TASK_TEXTS,
    monitor_inputs,
    probes_for_selection,
)
from lm_eval_approx.training.history import TrainingHistory
from lm_eval_approx.training.summary import read_training_history

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
        add("--device", default=CPU, help=f"where a probe stop signal's models run (θf's teacher distribution, the "
            f"samplers of monitor texts): {DEVICES_ACCEPTED}; default {CPU}")
        add("--dtype", default=DEFAULT_DTYPE, help=f"those models' dtype: {' | '.join(DTYPES)} (default "
            f"{DEFAULT_DTYPE}; another dtype is recorded in the training key)")
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
    from lm_eval_approx.training.loop import train_adapter  # torch: only when training

    device, dtype = check_device("device", args.device), check_dtype("dtype", args.dtype)
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
    probes, monitor = ((), None)
    if recipe.uses_probe:
        check_device_available("device", device)  # before any monitor text is drawn or model loaded
        probes, monitor = _probes_and_monitor_key(args.base, finetuned, spec, recipe, examples, device, dtype)
    out = train_adapter(args.base, spec, examples, recipe, args.out, progress=not args.no_progress,
                        probes=probes, monitor=monitor)
    history: TrainingHistory = read_training_history(out)  # type: ignore[assignment]  # train_adapter wrote it
    kept = (f"{recipe.stop_on} {history.best_signal:.4g}" if recipe.uses_probe
            else f"validation loss {history.best_validation_loss}")
    print(
        f"{out}: {history.n_train} training / {history.n_validation} validation examples, "
        f"best epoch {history.best_epoch} of {history.epochs_run}, {kept}, "
        f"{history.examples_per_second:.1f} examples/s",
        file=sys.stdout,
    )
    return 0


def _probes_and_monitor_key(base: str, finetuned: str | None, spec, recipe: TrainingRecipe, examples: list,
                            device: str = CPU, dtype: str = DEFAULT_DTYPE) -> tuple:
    """The stop signal's probe on texts of the task's training split that were not selected (θf and
    the samplers on ``device`` in ``dtype``), and what identifies it in the training key (the texts'
    source, θf and its dtype), so an output folder trained against another θf is not reused."""
    probes = probes_for_selection(spec, recipe, examples, base=base, finetuned=finetuned, max_length=recipe.max_length,
                                  device=device, dtype=dtype)
    return probes, json.dumps(monitor_inputs(recipe, TASK_TEXTS, finetuned or base, dtype), sort_keys=True)
