"""Data sets of the approximation tasks for lm-eval's ``custom_dataset`` hook.

Each loader returns a ``datasets.DatasetDict`` read from the mirror of ``LM_EVAL_APPROX_DATA``
when it holds the files, else from the hub; offline with neither, a ``DataNotFoundError`` names
the variable and the expected layout.
"""

from __future__ import annotations

from lm_eval_approx.data.corpus import load_hub, read_records
from lm_eval_approx.data.mirror import hub_offline, mirror_file, mirror_missing

# lm-eval calls custom_dataset(**task_metadata, **dataset_kwargs); the metadata (e.g. `version`,
# or anything a user passes with --metadata for other tasks) carries nothing these loaders use.


# The canonical AG News test file is ordered (its first hundreds of rows are mostly Sci/Tech), so
# lm-eval's --limit N (the first N rows) would score a skewed subset; a fixed permutation of the
# test rows makes every --limit a uniform sample while the full split stays the same set.
SHUFFLE_SEED = 0


def _dataset_dict(name: str, splits: dict[str, str], hub: tuple[str, str] | None, shuffle: tuple[str, ...] = ()):
    import datasets
    import numpy as np

    out = {}
    for split, relative in splits.items():
        path = mirror_file(relative)
        if path is not None:
            rows = read_records(path)
        elif hub is not None and not hub_offline():
            rows = [{"text": text, "label": label} for _, text, label, _ in load_hub(hub[0], split, hub[1], name)]
        else:
            raise mirror_missing(f"task data {name} ({relative})")
        if split in shuffle:
            rows = [rows[i] for i in np.random.default_rng(SHUFFLE_SEED).permutation(len(rows))]
        out[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(out)


def load_agnews(**_metadata):
    """AG News train/test: ``text`` and ``label`` 0-3 (World, Sports, Business, Sci/Tech)."""
    return _dataset_dict(
        "ag_news", {"train": "ag_news/train.jsonl", "test": "ag_news/test.jsonl"}, ("fancyzhx/ag_news", "text"),
        shuffle=("test",),
    )


def load_msmarco(**_metadata):
    """MS MARCO passages train/test: ``pid`` and ``text``."""
    return _dataset_dict(
        "msmarco", {"train": "msmarco/train.jsonl", "test": "msmarco/test.jsonl"},
        ("Tevatron/msmarco-passage-corpus", "text"),
    )


def load_wikitext2(**_metadata):
    """WikiText-2 paragraphs of the mirror's seed corpus, as lm-eval's ``wikitext`` task reads them
    (field ``page``); the hub task itself is used when the hub is reachable."""
    import datasets

    path = mirror_file("seed/wikitext2.jsonl")
    if path is None:
        raise mirror_missing("task data wikitext (seed/wikitext2.jsonl)")
    rows = [{"page": row["text"]} for row in read_records(path)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_jsonl_splits(file: str | None = None, test_size: int | None = None, validation_size: int = 0,
                      seed: int = 0, **_metadata):
    """Disjoint train / (validation) / test splits of ONE JSON Lines (or CSV) file, for a task YAML
    with no Python of its own::

        custom_dataset: !function lm_eval_approx.tasks.dataset_loaders.load_jsonl_splits
        dataset_kwargs: {file: seed/dbpedia.jsonl, test_size: 1000, seed: 0}

    ``file`` is relative to the data mirror (``LM_EVAL_APPROX_DATA``), or absolute / ``~``. The rows
    are permuted with ``seed``; the first ``test_size`` form ``test``, the next ``validation_size``
    ``validation`` (when > 0), the rest ``train``. Every row keeps its fields."""
    import datasets
    import numpy as np

    from lm_eval_approx.cache.safe_paths import expand_user
    from lm_eval_approx.config_checks import check_int
    from lm_eval_approx.errors import ConfigError

    if not isinstance(file, str) or not file.strip():
        raise ConfigError("dataset_kwargs.file", file, "a JSONL/CSV file, relative to LM_EVAL_APPROX_DATA or absolute")
    test_size = check_int("dataset_kwargs.test_size", test_size, minimum=1)
    check_int("dataset_kwargs.validation_size", validation_size, minimum=0)
    check_int("dataset_kwargs.seed", seed, minimum=0)
    given = expand_user(file)
    path = given if given.is_absolute() else mirror_file(file)
    if path is None or not path.is_file():
        raise mirror_missing(f"task data file {file}") if not given.is_absolute() else ConfigError(
            "dataset_kwargs.file", file, "an existing file")
    rows = read_records(path)
    if test_size + validation_size >= len(rows):
        raise ConfigError("dataset_kwargs.test_size", test_size, f"test_size + validation_size below the file's "
                          f"{len(rows)} rows, so the training split is not empty")
    order = np.random.default_rng(seed).permutation(len(rows))
    cuts = {"test": order[:test_size], "validation": order[test_size:test_size + validation_size],
            "train": order[test_size + validation_size:]}
    return datasets.DatasetDict({name: datasets.Dataset.from_list([rows[i] for i in picks])
                                 for name, picks in cuts.items() if len(picks)})
