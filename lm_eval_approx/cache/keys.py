"""Cache keys: one short hash, one cache-schema version, and the one table of how keys of each
schema record what was added after they were first made.

Every key and fingerprint of the package is ``short_hash`` of a canonical payload: the first
``length`` hex digits of its SHA-256 (``KEY_CHARS`` unless a key has always been another length).
A key (a stage folder's, a leaderboard cell's, a recipe's, the train command's) is made by
``record_key`` or ``text_key``, which add the schema version to the payload; a fingerprint of
content (a corpus, a selection, a model's files) has no schema and is ``short_hash`` itself.

Schema ``FIRST_SCHEMA`` is the schema of every key made so far (caches hours of compute deep and
the published ``results/cpu`` cells depend on them), so its keys are exactly the payload, with no
version in it. A bump of ``CACHE_SCHEMA`` puts the version into every key made from then on, and
``KEY_RULES`` starts again empty for it. The older schema's keys remain computable
(``schema=FIRST_SCHEMA``), for code that reads what an older schema left in a cache; nothing here
renames, moves or deletes anything on disk.

``KEY_RULES`` maps (schema, kind) to the rule a key of that schema follows: the fields it leaves
out while they hold the value that reproduces how things were before the field existed, and the
values it records under an older name. A kind is a stage's name or one of the ``*_KIND`` names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lm_eval_approx.errors import ConfigError

FIRST_SCHEMA = 1
CACHE_SCHEMA = 1
KEY_CHARS = 16
SCHEMA_FIELD = "schema"
# The kinds of keys other than stages.
TASK_KIND = "task"
CELL_KIND = "cell"
CELL_RECIPE_KIND = "cell recipe"
RECIPE_KIND = "recipe"
MONITOR_KIND = "training monitor"  # what a probe stop signal adds to a training key

Payload = str | bytes | Iterable[str | bytes]


def short_hash(payload: Payload, length: int = KEY_CHARS) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``payload``: a string (UTF-8), bytes, or
    an iterable of them hashed as their concatenation (so a long sequence streams)."""
    digest = hashlib.sha256()
    for part in (payload,) if isinstance(payload, (str, bytes)) else payload:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()[:length]


@dataclass(frozen=True)
class KeyRule:
    """How a key of one schema records one kind of input: ``omitted`` fields are left out while
    they equal the value given, ``renamed`` values are recorded under their older name."""

    reason: str
    omitted: Mapping[str, Any] = field(default_factory=dict)
    renamed: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:  # a table entry is history: nobody may edit it in place
        object.__setattr__(self, "omitted", MappingProxyType(dict(self.omitted)))
        object.__setattr__(self, "renamed", MappingProxyType(dict(self.renamed)))


_UNSET_BOS = "add_bos_token came after these keys: unset, the encoding is the one they were made with"
_FLOAT32 = "extract_dtype came after these keys: float32, the dtype their models always ran in"

KEY_RULES: dict[tuple[int, str], KeyRule] = {
    (FIRST_SCHEMA, "labels"): KeyRule(f"{_UNSET_BOS}; {_FLOAT32}", {"add_bos_token": None, "extract_dtype": "float32"}),
    (FIRST_SCHEMA, "base_loss"): KeyRule(f"{_UNSET_BOS}; {_FLOAT32}",
                                         {"add_bos_token": None, "extract_dtype": "float32"}),
    (FIRST_SCHEMA, "training"): KeyRule(_UNSET_BOS, {"add_bos_token": None}),
    (FIRST_SCHEMA, "features"): KeyRule(
        f"{_UNSET_BOS}; {_FLOAT32}; θf's own store (α = 1, no checkpoint) keeps the key it had before stages "
        "were per α", {"add_bos_token": None, "extract_dtype": "float32", "checkpoint": None}),
    (FIRST_SCHEMA, "generations"): KeyRule(_FLOAT32, {"extract_dtype": "float32"}),
    (FIRST_SCHEMA, "monitor_teacher"): KeyRule(_FLOAT32, {"extract_dtype": "float32"}),
    (FIRST_SCHEMA, "probe"): KeyRule(_FLOAT32, {"extract_dtype": "float32"}),
    (FIRST_SCHEMA, MONITOR_KIND): KeyRule(_FLOAT32, {"extract_dtype": "float32"}),
    (FIRST_SCHEMA, TASK_KIND): KeyRule(
        "the shipped tasks were keyed by name while Python rendered them; their YAML renders the same "
        "strings (tests/test_task_specs.py), so while the prompt is this one the key is the old name "
        "(approx_msmarco_last renders approx_msmarco's examples and shared its key)",
        renamed={"approx_agnews@57ff6a8c4570f56b": "approx_agnews",
                 "approx_msmarco@2d63536b4926120c": "approx_msmarco",
                 "approx_msmarco_last@438d1e7cec95817d": "approx_msmarco"}),
    (FIRST_SCHEMA, CELL_KIND): KeyRule(
        "cells recorded before these options existed ran what their unset values run",
        {"seed_retraining": False, "target_source": None, "micro_batches": {}, "training_path": {}}),
    (FIRST_SCHEMA, CELL_RECIPE_KIND): KeyRule(
        "a config's recipe that states one pass per batch or the training path before the fast one "
        "restates what cells hashed without it ran (what the resolved recipes do is hashed apart)",
        {"micro_batch_size": 0, "mixed_precision": "no", "batch_order": "shuffled", "dropout_sampler": "torch"}),
}


def check_schema(schema: object) -> int:
    """``schema`` as a schema number: an int from ``FIRST_SCHEMA`` on (a named error otherwise)."""
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < FIRST_SCHEMA:
        raise ConfigError("schema", schema, f"a cache schema number, an integer >= {FIRST_SCHEMA} "
                          f"(the current one is {CACHE_SCHEMA})")
    return schema


def key_rule(kind: str, schema: int = CACHE_SCHEMA) -> KeyRule | None:
    """The rule keys of ``schema`` follow for ``kind``, None when they record it whole."""
    return KEY_RULES.get((check_schema(schema), kind))


def keyed_fields(kind: str, record: Mapping[str, Any], schema: int = CACHE_SCHEMA) -> dict[str, Any]:
    """``record`` as keys of ``schema`` record it: without the fields its rule leaves out at their
    old value (the comparison is ``==``, as the keys were made)."""
    rule = key_rule(kind, schema)
    if rule is None:
        return dict(record)
    return {name: value for name, value in record.items()
            if not (name in rule.omitted and value == rule.omitted[name])}


def keyed_name(kind: str, value: str, schema: int = CACHE_SCHEMA) -> str:
    """``value`` as keys of ``schema`` record it: its older name when its rule renames it."""
    rule = key_rule(kind, schema)
    return value if rule is None else rule.renamed.get(value, value)


def record_key(kind: str, record: Mapping[str, Any], *, length: int = KEY_CHARS,
               separators: tuple[str, str] | None = None, schema: int = CACHE_SCHEMA) -> str:
    """The key of a JSON-able record (sorted keys; ``default=str`` for anything else) under
    ``schema``: its rule applied, and from the schema after ``FIRST_SCHEMA`` on the schema itself."""
    payload = keyed_fields(kind, record, schema)
    if schema != FIRST_SCHEMA:
        payload = {SCHEMA_FIELD: schema, **payload}
    return short_hash(json.dumps(payload, sort_keys=True, default=str, separators=separators), length)


def text_key(text: str, *, length: int = KEY_CHARS, schema: int = CACHE_SCHEMA) -> str:
    """The key of a canonical text under ``schema`` (from the schema after ``FIRST_SCHEMA`` on, the
    schema is its first line)."""
    if check_schema(schema) != FIRST_SCHEMA:
        text = f"{SCHEMA_FIELD}={schema}\n{text}"
    return short_hash(text, length)
