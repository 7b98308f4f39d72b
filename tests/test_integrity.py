"""Checksums of finished stages and feature stores: damage is detected, warned about and rebuilt;
legacy records (written before checksums) are trusted as they are."""

from __future__ import annotations

import json
import os
import random
import uuid

import numpy as np
import pytest

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.cache.integrity import (
    FULL,
    SIZE,
    VERIFY_ENV,
    find_damage,
    folder_checksums,
    verify_level,
)
from lm_eval_approx.cache.stages import DONE_FILE, run_stage
from lm_eval_approx.features.store import FeatureStore, StoreCorruptError

ROWS, DIM = 6, 8


def _stage(calls: list, name: str = "demo", inputs: dict | None = None):
    def compute(folder):
        calls.append(folder)
        (folder / "sub").mkdir(exist_ok=True)
        np.save(folder / "values.npy", np.arange(50, dtype=np.float32) + len(calls))
        (folder / "sub" / "note.txt").write_text(f"call {len(calls)}")
        return {"n": len(calls)}

    return run_stage(name, inputs or {"run": uuid.uuid4().hex}, compute)


def test_finished_stage_records_size_and_sha256_of_every_file():
    calls = []
    record = _stage(calls)
    files = json.loads((record.path / DONE_FILE).read_text())["files"]
    assert set(files) == {"values.npy", "sub/note.txt"}
    assert files == folder_checksums(record.path, skip=(DONE_FILE,))
    assert files["sub/note.txt"]["size"] == len("call 1")
    again = _stage(calls, inputs=_inputs_of(record))
    assert again.cached and len(calls) == 1


def _inputs_of(record):
    return json.loads((record.path / DONE_FILE).read_text())["inputs"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_stage_is_moved_aside_with_a_warning_and_recomputed(damage):
    calls = []
    first = _stage(calls)
    target = first.path / "values.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.warns(RuntimeWarning, match=rf"stage 'demo' \(key {first.key}\).*values\.npy") as caught:
        again = _stage(calls, inputs=_inputs_of(first))
    assert not again.cached and len(calls) == 2 and again.info == {"n": 2}
    moved = [p for p in (first.path.parent / ".corrupt").iterdir() if p.name.startswith(first.key)]
    assert moved and "moved it to" in str(caught[0].message)
    assert find_damage(again.path, json.loads((again.path / DONE_FILE).read_text())["files"], FULL) == []


def test_size_level_skips_hashing_so_a_same_size_change_passes(monkeypatch):
    calls = []
    first = _stage(calls)
    note = first.path / "sub" / "note.txt"
    note.write_text("CALL 1")
    monkeypatch.setenv(VERIFY_ENV, SIZE)
    assert _stage(calls, inputs=_inputs_of(first)).cached
    monkeypatch.setenv(VERIFY_ENV, FULL)
    with pytest.warns(RuntimeWarning, match="sub/note.txt: sha256"):
        assert not _stage(calls, inputs=_inputs_of(first)).cached


def test_legacy_stage_record_without_checksums_is_trusted_and_left_alone():
    calls = []
    first = _stage(calls)
    done = first.path / DONE_FILE
    record = json.loads(done.read_text())
    del record["files"]
    done.write_text(json.dumps(record))
    (first.path / "values.npy").write_bytes(b"legacy bytes, never checked")
    before = done.stat().st_mtime_ns
    again = _stage(calls, inputs=_inputs_of(first))
    assert again.cached and len(calls) == 1 and done.stat().st_mtime_ns == before


def test_unreadable_stage_record_is_recomputed_with_a_warning():
    calls = []
    first = _stage(calls)
    inputs = _inputs_of(first)
    (first.path / DONE_FILE).write_text('{"stage": "demo", "fi')
    with pytest.warns(RuntimeWarning, match="stage.json: unreadable"):
        assert not _stage(calls, inputs=inputs).cached


def test_bad_verify_level_is_a_named_error(monkeypatch):
    monkeypatch.setenv(VERIFY_ENV, "sometimes")
    with pytest.raises(ConfigError, match="LM_EVAL_APPROX_VERIFY='sometimes'.*size or full"):
        verify_level()


def test_find_damage_agrees_with_rehashing_the_whole_folder(tmp_path):
    """Twin check: the size-first comparison flags exactly the files whose full checksum changed."""
    rng = random.Random(0)
    for name in "abcdefgh":
        (tmp_path / name).write_bytes(os.urandom(rng.randrange(1, 300)))
    record = folder_checksums(tmp_path)
    for name in rng.sample("abcdefgh", 4):
        data = bytearray((tmp_path / name).read_bytes())
        if rng.random() < 0.5:
            data = data[:-1] + b"x" if len(data) > 1 else b"xy"
        else:
            data[0] ^= 0x01
        (tmp_path / name).write_bytes(bytes(data))
    now = folder_checksums(tmp_path)
    changed = {n for n in record if now[n] != record[n]}
    assert {p.split(":")[0] for p in find_damage(tmp_path, record, FULL)} == changed


def _store(path):
    ids = [f"d{i}" for i in range(ROWS)]
    store = FeatureStore.create(path, {"task": "demo"}, ids, DIM)
    store.set_target(np.ones(DIM, dtype=np.float32))
    store.write_rows(np.arange(ROWS), np.ones((ROWS, DIM)), np.zeros(ROWS), np.zeros(ROWS, dtype=np.int64),
                     np.ones(ROWS))
    return ids


def test_truncated_store_column_is_a_named_error_and_resume_rebuilds_it(tmp_path):
    path = tmp_path / "store"
    ids = _store(path)
    features = path / "features.f16"
    features.write_bytes(features.read_bytes()[: ROWS * DIM])
    with pytest.raises(StoreCorruptError, match=r"features\.f16: 48 bytes, expected 96"):
        FeatureStore.open(path)
    with pytest.warns(RuntimeWarning, match="rebuilding the store"):
        rebuilt = FeatureStore.open_or_create(path, {"task": "demo"}, ids, DIM)
    assert len(rebuilt.pending()) == ROWS and rebuilt.target is None
    assert any((tmp_path / ".corrupt").iterdir())


def test_unreadable_store_target_or_meta_is_a_named_error(tmp_path):
    path = tmp_path / "store"
    _store(path)
    (path / "target.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(StoreCorruptError, match="target.npy"):
        FeatureStore.open(path)
    (path / "meta.json").write_text("{")
    with pytest.raises(StoreCorruptError, match="meta.json"):
        FeatureStore.open(path)
