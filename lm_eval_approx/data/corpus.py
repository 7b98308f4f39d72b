"""Candidate corpora: named mirror corpora, mixtures, local files and hub data sets.

A spec is one source or several joined by ``+``: ``ag_news:train``, ``msmarco:test``,
``seed:wikitext2``, ``seed:wikitext2+seed:dbpedia``, a local ``.jsonl``/``.json``/``.csv``/
``.parquet``/``.txt`` path, or a hub data set ``owner/name[:split]``. ``parse_corpus_spec`` is
the one reader of that grammar (syntax only; the leaderboard checks configs with it), and
``load_corpus`` loads what it returns. Named corpora read the mirror folder of ``LM_EVAL_APPROX_DATA`` first and the hub second. Exact repeats (after whitespace
normalisation) and empty documents are dropped; every document keeps a stable id
``<source>:<row>`` (its row in the source), so a selection can always be traced back.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.cache.safe_paths import expand_user
from lm_eval_approx.config_checks import check_int, is_int
from lm_eval_approx.data.mirror import (
    data_dir,
    hub_offline,
    mirror_file,
    mirror_missing,
)
from lm_eval_approx.errors import ConfigError, DataNotFoundError

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "content", "passage", "sentence", "document")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# csv's default field limit (131,072 characters) would refuse a 1 MB document; this one admits it.
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
MIRROR_NAMED = {"ag_news": ("train", "test"), "msmarco": ("train", "test")}  # first split: the default
MIRROR, SEED, LOCAL, HUB = "mirror", "seed", "local", "hub"
SEED_NAME = re.compile(r"[\w.-]+")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(?::[\w.-]+)?")
HUB_DEFAULT_SPLIT = "train"
# A part starting like this names a file (it needs a LOCAL_SUFFIXES suffix), never a hub id.
PATH_STARTS = ("/", "~", ".", "\\")
SPEC_ACCEPTED = ("ag_news:train|test, msmarco:train|test, seed:<name>, a local "
                 f"{'/'.join(LOCAL_SUFFIXES)} file, or a hub id owner/name[:split]")
# Hub equivalents of the mirror, for machines that reach the hub: (dataset id, config, text field).
HUB_EQUIVALENTS = {
    "ag_news": ("fancyzhx/ag_news", None, "text"),
    "msmarco": ("Tevatron/msmarco-passage-corpus", None, "text"),
    "seed:nq": ("jxm/nq_corpus_dpr", None, "text"),
    "seed:dbpedia": ("fancyzhx/dbpedia_14", None, "content"),
}


@dataclass(frozen=True)
class SourceSpec:
    """One source of a corpus spec: its ``kind`` (mirror, seed, local or hub), the part as written
    (``text``, also the source name in document ids), the corpus/seed name, file path or hub id
    (``name``) and the split (mirror and hub; '' otherwise)."""

    kind: str
    text: str
    name: str
    split: str = ""


@dataclass
class Corpus:
    """Documents with stable ids, optional true labels and the name of the source of each."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    dropped_duplicates: int = 0
    dropped_empty: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> Corpus:
        idx = [int(i) for i in indices]
        return Corpus(
            [self.ids[i] for i in idx], [self.texts[i] for i in idx],
            [self.labels[i] for i in idx], [self.sources[i] for i in idx],
        )

    def fingerprint(self) -> str:
        """A hash of ids and texts: equal fingerprints mean the same documents in the same order."""
        return short_hash(doc_id.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\n"
                          for doc_id, text in zip(self.ids, self.texts))

    def index(self) -> dict[str, int]:
        return {doc_id: i for i, doc_id in enumerate(self.ids)}


@contextlib.contextmanager
def _csv_field_limit():
    """Admit CSV fields of any document size, restoring csv's process-wide limit afterwards."""
    before = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _read_rows(path: Path, suffix: str) -> list:
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{path}:{lineno}", line[:80], f"valid JSON ({exc.msg})") from None
        return rows
    if suffix == ".json":
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(str(path), text[:80], f"valid JSON ({exc.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("data", []), list):
            return data.get("data", [])
        if not isinstance(data, list):
            raise ConfigError(str(path), text[:80], "a JSON list of rows or an object with a 'data' list")
        return data
    if suffix == ".csv":
        with _csv_field_limit(), path.open(encoding="utf-8", errors="replace", newline="") as fh:
            try:
                return list(csv.DictReader(fh))
            except csv.Error as exc:
                raise ConfigError(str(path), "(csv)", f"a readable CSV file ({exc})") from None
    if suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except pyarrow.ArrowException as exc:
            raise ConfigError(str(path), "(parquet)", f"a readable Parquet file ({exc})") from None
    return [{"text": line} for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]


def read_records(path: Path) -> list:
    """Rows of a local JSONL/JSON/CSV/Parquet/TXT file (invalid UTF-8 bytes become U+FFFD)."""
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise ConfigError("corpus", str(path), f"a file ending in one of {', '.join(LOCAL_SUFFIXES)}")
    try:
        return _read_rows(path, suffix)
    except OSError as exc:
        raise DataNotFoundError(f"cannot read corpus file {str(path)!r}: {exc.strerror or exc}") from None


def _text_of(row: dict, key: str, where: str) -> str:
    """The document text of a row: a string (lone surrogates replaced), a number, or empty for null."""
    value = row[key]
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}.{key}", value, "a string (the document text)")
    text = str(value)
    return text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _label_of(row: dict, where: str) -> int | None:
    """An integer label (``3``, ``3.0``, ``"3"``), or None when the row has none."""
    label = row.get("label")
    if label is None or label == "":
        return None
    if isinstance(label, float) and math.isfinite(label) and label.is_integer():
        return int(label)
    if isinstance(label, str) and label.strip().lstrip("+-").isdigit() and label.strip().isascii():
        return int(label.strip())
    if not is_int(label):
        raise ConfigError(f"{where}.label", label, "an integer class index, or empty/null for no label")
    return label


def _rows_to_docs(rows: list, source: str, text_field: str | None = None):
    fields = (text_field,) if text_field else TEXT_FIELDS
    docs = []
    for row_no, row in enumerate(rows):
        where = f"{source} row {row_no}"
        if not isinstance(row, dict):
            raise ConfigError(where, row if not isinstance(row, str) else row[:80],
                              "rows that are JSON objects with a text field")
        key = next((f for f in fields if f in row), None)
        if key is None:
            raise ConfigError(where, sorted(str(k) for k in row)[:10], f"a text field named one of {', '.join(fields)}")
        docs.append((f"{source}:{row_no}", _text_of(row, key, where), _label_of(row, where), source))
    return docs


def load_hub(dataset_id: str, split: str, text_field: str | None, source: str):
    if hub_offline():
        raise mirror_missing(f"{source!r} (hub data set {dataset_id})")
    import datasets

    try:
        data = datasets.load_dataset(dataset_id, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise DataNotFoundError(f"cannot load hub data set {dataset_id!r} split {split!r}: {exc}") from None
    return _rows_to_docs(list(data), source, text_field)


def parse_source(part: str) -> SourceSpec:
    """One ``+``-separated part of a corpus spec, by syntax alone (see ``parse_corpus_spec``)."""
    part = part.strip()
    if not part:
        raise ConfigError("corpus", part, "a non-empty source between '+' signs")
    name, _, split = part.partition(":")
    if name in MIRROR_NAMED:
        split = split or MIRROR_NAMED[name][0]
        if split not in MIRROR_NAMED[name]:
            raise ConfigError("corpus", part, f"{name}:" + f" or {name}:".join(MIRROR_NAMED[name]))
        return SourceSpec(MIRROR, part, name, split)
    if name == SEED:
        if not SEED_NAME.fullmatch(split):
            raise ConfigError("corpus", part, "seed:<name> (letters, digits, _ . -), e.g. seed:wikitext2")
        return SourceSpec(SEED, part, split)
    suffix = PurePath(part).suffix.lower()
    if suffix in LOCAL_SUFFIXES:
        return SourceSpec(LOCAL, part, part)
    if part.startswith(PATH_STARTS):
        raise ConfigError("corpus", part, f"a local file ending in one of {', '.join(LOCAL_SUFFIXES)}")
    if HUB_ID.fullmatch(part):
        return SourceSpec(HUB, part, name, split or HUB_DEFAULT_SPLIT)
    raise ConfigError("corpus", part, SPEC_ACCEPTED)


def parse_corpus_spec(spec: object) -> list[SourceSpec]:
    """The sources of a corpus spec, checked for syntax only (no file or hub is reached, so the
    leaderboard checks a config with it in a second): each ``+``-joined part is a named mirror
    corpus (``ag_news[:train|test]``, ``msmarco[:train|test]``), ``seed:<name>``, a local file
    (by its suffix; a part starting like a path must have one) or a hub id ``owner/name[:split]``.
    Any other part is a ConfigError naming the part and the grammar."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("corpus", spec, "a non-empty corpus spec such as seed:wikitext2+seed:dbpedia")
    if "\0" in spec:
        raise ConfigError("corpus", spec, "a spec without NUL characters")
    return [parse_source(part) for part in spec.split("+")]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _load_seed(source: SourceSpec):
    path = mirror_file(f"seed/{source.name}.jsonl")
    if path is not None:
        return _rows_to_docs(read_records(path), source.text)
    if source.text in HUB_EQUIVALENTS:
        hub_id, _, field_name = HUB_EQUIVALENTS[source.text]
        return load_hub(hub_id, HUB_DEFAULT_SPLIT, field_name, source.text)
    root = data_dir()
    known = sorted(p.stem for p in (root / "seed").glob("*.jsonl")) if root and (root / "seed").is_dir() else []
    if known:
        raise ConfigError("corpus", source.text, "one of " + ", ".join(f"seed:{k}" for k in known))
    raise mirror_missing(f"corpus {source.text!r}")


def _load_source(source: SourceSpec, taken: set[str] | frozenset[str] = frozenset()):
    """The documents of one parsed source; ``taken`` holds the source names used so far."""
    if source.kind == MIRROR:
        path = mirror_file(f"{source.name}/{source.split}.jsonl")
        if path is not None:
            return _rows_to_docs(read_records(path), source.text)
        hub_id, _, field_name = HUB_EQUIVALENTS[source.name]
        return load_hub(hub_id, source.split, field_name, source.text)
    if source.kind == SEED:
        return _load_seed(source)
    path = expand_user(source.text)
    if source.kind == LOCAL:
        if not _is_file(path):
            raise ConfigError("corpus", source.text, f"an existing local file ({', '.join(LOCAL_SUFFIXES)})")
        # Ids are <file name>:<row>; a second file of the same name keeps the path as typed, so ids stay unique.
        return _rows_to_docs(read_records(path), path.name if path.name not in taken else source.text)
    if _is_file(path):  # a local file that reads like a hub id: say why it is not read
        raise ConfigError("corpus", source.text, f"a local file ending in one of {', '.join(LOCAL_SUFFIXES)}")
    return load_hub(source.name, source.split, None, source.text)


DEDUP_DIGEST_BYTES = 16


def load_corpus(spec: str, limit: int | None = None, seed: int = 0) -> Corpus:
    """Load, deduplicate and optionally subsample (``limit`` documents drawn with ``seed``)."""
    parts = parse_corpus_spec(spec)
    check_int("limit", limit, minimum=1, optional=True)
    check_int("seed", seed, minimum=0, accepted="an integer ≥ 0 (the seed of the limit draw)")
    corpus, seen, sources = Corpus(), set(), set[str]()
    for part in parts:
        docs = _load_source(part, sources)
        sources.update(source for _, _, _, source in docs[:1])
        for doc_id, text, label, source in docs:
            normal = " ".join(text.split())
            if not normal:
                corpus.dropped_empty += 1
                continue
            # A 128-bit digest instead of the text: the dedup set then costs ~100 B per document
            # rather than a second copy of the corpus (collisions are ~2^-64 likely at 2^32 documents).
            key = hashlib.blake2b(normal.encode("utf-8"), digest_size=DEDUP_DIGEST_BYTES).digest()
            if key in seen:
                corpus.dropped_duplicates += 1
                continue
            seen.add(key)
            corpus.ids.append(doc_id)
            corpus.texts.append(text)
            corpus.labels.append(label)
            corpus.sources.append(source)
    if not corpus.ids:
        raise ConfigError("corpus", spec, "a corpus with at least one non-empty document")
    if limit is not None and limit < len(corpus):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(corpus), size=limit, replace=False))
        dropped = (corpus.dropped_duplicates, corpus.dropped_empty)
        corpus = corpus.subset(keep)
        corpus.dropped_duplicates, corpus.dropped_empty = dropped
    if corpus.dropped_duplicates or corpus.dropped_empty:
        logger.info(
            "corpus %s: dropped %d exact duplicates and %d empty documents",
            spec, corpus.dropped_duplicates, corpus.dropped_empty,
        )
    return corpus
