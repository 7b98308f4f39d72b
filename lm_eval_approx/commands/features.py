"""``lm-eval-approx features``: build (or resume) the gradient feature store of a corpus.

Run it under ``torchrun --nproc_per_node N`` (CPU) or ``accelerate launch`` (GPUs) to shard the
corpus over processes; rank 0 merges the shards.
"""

from __future__ import annotations

from lm_eval_approx.config_checks import add_field_arguments, field_values
from lm_eval_approx.data.corpus import load_corpus
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.models.pairs import check_model_pair
from lm_eval_approx.plugins.registry import include_task_folders
from lm_eval_approx.tasks.kinds import CLASSIFICATION
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
from lm_eval_approx.training.examples import check_labels

# The FeatureConfig fields the command line sets, in flag order; corpus_limit is spelled --limit.
FLAG_FIELDS = ("base", "finetuned", "task", "corpus", "params", "dim", "checkpoints", "labels", "corpus_limit",
               "corpus_seed", "batch_size", "max_length", "projection", "seed", "sqnorm", "dtype", "device")
REQUIRED_FIELDS = ("base", "finetuned", "task", "corpus")


def run_features(args) -> int:
    from lm_eval_approx.features.build import (
        build_feature_stores,  # torch: only when extracting
    )

    include_task_folders(args.include_path)
    config = FeatureConfig(**field_values(args, FeatureConfig, FLAG_FIELDS))
    check_model_pair(config.base, config.finetuned, config.params)
    corpus = load_corpus(config.corpus, limit=config.corpus_limit, seed=config.corpus_seed)
    spec = get_task_spec(config.task)
    if config.labels == "true" and spec.kind == CLASSIFICATION:
        check_labels("corpus", corpus.labels, corpus.ids, spec)
    stores = build_feature_stores(config, corpus, None, args.out)
    for store in stores:
        print(f"alpha={store.alpha:g}: {len(store)} examples × d={store.dim} in {store.path}")
    return 0


def add_parser(subparsers) -> None:
    """``features``: one flag per FeatureConfig field of FLAG_FIELDS (help, default, type and
    choices from the field), plus ``--out``."""
    help_text = "per-example gradient features of a corpus, projected, in a resumable store"
    parser = subparsers.add_parser("features", help=help_text, description=help_text)
    add_field_arguments(parser, FeatureConfig, FLAG_FIELDS, flags={"corpus_limit": "--limit"},
                        required=REQUIRED_FIELDS)
    parser.add_argument("--out", required=True, help="output folder of the feature store")
    parser.add_argument("--include-path", action="append", default=[], metavar="DIR",
                        help="a folder of lm-eval task YAML in which --task may be defined, repeatable")
    parser.set_defaults(func=run_features)
