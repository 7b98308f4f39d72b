"""``lm-eval-approx select``: run a selection strategy on feature stores and write a selection file.

    lm-eval-approx select --strategy select --k 300 --features runs/feats \\
        [--features runs/feats_ckpt2 ...] [--corpus seed:wikitext2+seed:dbpedia] \\
        [--task approx_agnews] [--seed 0] [--option min_cosine=0.01] --out selection.jsonl

Texts come from the corpus (``--corpus``, or the spec recorded in the store's metadata) matched
to the store's ids. ``--strategy`` takes any registered name, third-party ones included.
"""

from __future__ import annotations

import argparse
import json

from lm_eval_approx.data.corpus import load_corpus
from lm_eval_approx.data.selection_file import write_selection
from lm_eval_approx.errors import ApproxError, ConfigError, SelectionError
from lm_eval_approx.features.store import FeatureStore
from lm_eval_approx.strategies.pool import build_pool, selection_rows
from lm_eval_approx.strategies.registry import select, strategy_registry
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

CORPUS_META_KEYS = ("corpus", "corpus_spec")
TASK_META_KEY = "task"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("select", help="select k candidates with a strategy and write a selection file")
    p.add_argument("--strategy", required=True, help="a registered strategy name (see `lm-eval-approx strategies`)")
    p.add_argument("--k", type=int, required=True, help="how many documents to select")
    p.add_argument("--features", action="append", required=True, metavar="DIR",
                   help="feature store folder; repeat once per synthetic checkpoint")
    p.add_argument("--corpus", default=None, help="corpus spec the features were computed on "
                   "(default: the one recorded in the store)")
    p.add_argument("--task", default=None, help="approximation task naming the labels (default: the store's)")
    p.add_argument("--seed", type=int, default=0, help="seed of randomised strategies")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy option; the value is read as JSON when it parses, else as a string")
    p.add_argument("--out", required=True, help="selection file to write (JSONL)")
    p.set_defaults(func=run_select)


def parse_options(pairs: list[str]) -> dict:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--option", pair, "KEY=VALUE, e.g. min_cosine=0.01 or batch_size=8")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def check_options(strategy: str, options: dict) -> None:
    """The strategy exists and accepts these options (before any store or corpus is read)."""
    try:
        strategy_registry().get(strategy).obj(**options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ApproxError):
            raise
        raise ConfigError("--option", options, f"options strategy {strategy!r} accepts ({exc})") from None


def _meta_value(stores, keys):
    for store in stores:
        meta = getattr(store, "meta", {}) or {}
        for key in keys:
            if meta.get(key):
                return meta[key]
    return None


def _task_spec(task: str | None, given: bool):
    """The spec that names the labels: ``--task`` must resolve; a task recorded in the store is
    used when it still resolves, else the rows carry label ids without names."""
    if task is None:
        return None
    try:
        return get_task_spec(task)
    except ApproxError:
        if given:
            raise
        return None


def run_select(args: argparse.Namespace) -> int:
    if args.k < 0:
        raise ConfigError("--k", args.k, "a non-negative integer")
    options = parse_options(args.option)
    check_options(args.strategy, options)
    stores = [FeatureStore.open(path) for path in args.features]
    corpus = None
    spec_text = args.corpus or _meta_value(stores, CORPUS_META_KEYS)
    if spec_text is None and getattr(stores[0], "texts", None) is None:
        raise SelectionError("no corpus: pass --corpus with the spec the features were computed on")
    if spec_text is not None:
        recorded = args.corpus is None
        limit = _meta_value(stores, ("corpus_limit",)) if recorded else None
        seed = _meta_value(stores, ("corpus_seed",)) if recorded else None
        corpus = load_corpus(spec_text, limit=limit, seed=seed or 0)
    task = args.task or _meta_value(stores, (TASK_META_KEY,))
    spec = _task_spec(task, given=args.task is not None)
    pool = build_pool(corpus, stores=stores, num_classes=spec.num_classes if spec and spec.num_classes else None)
    selection = select(args.strategy, pool, args.k, args.seed, options)
    rows = selection_rows(pool, selection, spec)
    write_selection(args.out, rows)
    fewer = f" (fewer than k={args.k}: {selection.info})" if len(rows) < args.k else ""
    print(f"selected {len(rows)} documents with {args.strategy} -> {args.out}{fewer}")
    return 0
