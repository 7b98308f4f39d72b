"""The selection file: the hand-off from a strategy to training, one JSON object per line.

Fields of each row: ``id`` (str), ``text`` (str), ``label`` (int pseudo-label or null for
language-modelling tasks), ``label_text`` (str or null), ``score`` (float or null: the strategy's
score at pick time), ``weight`` (float > 0; 1.0 unless the strategy weights examples, e.g.
select_omp), ``order`` (int, pick order from 0), ``source`` (str or null: the corpus the document
came from). Rows are written in pick order.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.config_checks import check_int, check_number
from lm_eval_approx.errors import ApproxError


class SelectionFileError(ApproxError, ValueError):
    """A selection file is missing, unreadable, or has a row without the required fields."""


@dataclass(frozen=True)
class SelectedExample:
    id: str
    text: str
    label: int | None = None
    label_text: str | None = None
    score: float | None = None
    weight: float = 1.0
    order: int = 0
    source: str | None = None


def write_selection(path: str | Path, rows: list[SelectedExample]) -> Path:
    """Write rows atomically (temporary file, fsync, rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for row in rows:
            record = asdict(row)
            if record["score"] is not None and not math.isfinite(record["score"]):
                record["score"] = None
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _optional(record: dict, key: str, kinds: tuple, where: str, accepted: str):
    value = record.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        raise SelectionFileError(f"{where}: {key!r} must be {accepted} or null, got {value!r}")
    return value


def _row_error(where: str):
    """The error factory of the ``validation`` checks for the row at ``where``."""
    return lambda key, value, accepted: SelectionFileError(f"{where}: {key!r} must be {accepted}, got {value!r}")


def _row(record: object, where: str, position: int) -> SelectedExample:
    """One validated row; ``position`` is its place among the rows read so far (the default order)."""
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise SelectionFileError(f"{where}: each row needs a string field 'text'")
    if not record["text"].strip():
        raise SelectionFileError(f"{where}: 'text' is empty; a selected document needs text to train on")
    error = _row_error(where)
    label = check_int("label", record.get("label"), optional=True, accepted="an integer or null", error=error)
    weight = check_number("weight", record.get("weight", 1.0), low=0.0, low_open=True, accepted="a positive number",
                          error=error)
    order = check_int("order", record.get("order", position), minimum=0, error=error)
    score = _optional(record, "score", (int, float), where, "a number")
    doc_id = record.get("id", position)
    if isinstance(doc_id, (dict, list)):
        raise SelectionFileError(f"{where}: 'id' must be a string or a number, got {doc_id!r}")
    return SelectedExample(
        id=str(doc_id), text=record["text"], label=label,
        label_text=_optional(record, "label_text", (str,), where, "a string"),
        score=None if score is None else float(score), weight=float(weight), order=order,
        source=_optional(record, "source", (str,), where, "a string"),
    )


def read_selection(path: str | Path) -> list[SelectedExample]:
    """Read and validate a selection file (also accepts any JSONL with at least ``text``)."""
    path = Path(path)
    if not path.is_file():
        raise SelectionFileError(f"selection file {str(path)!r} does not exist")
    rows: list[SelectedExample] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SelectionFileError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                rows.append(_row(record, f"{path}:{lineno}", len(rows)))
    except UnicodeDecodeError as exc:
        raise SelectionFileError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise SelectionFileError(f"selection file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    return rows


def selection_hash(rows: list[SelectedExample]) -> str:
    """A content hash of what training sees (ids, texts, labels, weights, order)."""
    return short_hash(json.dumps([row.id, row.text, row.label, row.weight], ensure_ascii=False) + "\n" for row in rows)
