"""Untrusted model files: a malicious pickle is never executed, with or without ``allow_pickle``.

Each crafted file's unpickling would create a marker file (``__reduce__`` → ``open(marker, "w")``);
a control test proves that ``torch.load(weights_only=False)`` really does create it, and every
other test checks that the marker never appears and that the refusal is a named error.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import lm_eval_approx
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.loading import CONVERTED_MARKER, _converted, convert_gguf, load_model
from lm_eval_approx.cache.safe_paths import PathEscapeError
from lm_eval_approx.models.safe_weights import (
    PICKLE,
    SAFETENSORS,
    PickleCheckpointError,
    UnsafePickleError,
    check_weights,
    hf_model_args,
    parse_flag,
    pickle_allowed,
)
from lm_eval_approx.training.resume import (
    plain_state,
    read_checkpoint,
    restore_rng,
    rng_state,
    write_checkpoint,
)

PACKAGE = Path(lm_eval_approx.__file__).parent
FORBIDDEN_SOURCE = ("trust_remote_code=True", "weights_only=False", "allow_pickle=True)")


class _Exploit:
    """Unpickling this object opens (creates) ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(path: Path, marker: Path, zip_format: bool = True) -> Path:
    """A checkpoint whose unpickling runs ``_Exploit``: torch's zip format or a bare pickle."""
    payload = {"model.embed_tokens.weight": torch.zeros(2), "evil": _Exploit(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def _pickle_model(source: str, folder: Path, marker: Path | None = None) -> Path:
    """``source``'s config and tokenizer with its weights as pytorch_model.bin (malicious when
    ``marker`` is given)."""
    folder.mkdir()
    for item in Path(source).iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, folder / item.name)
    if marker is None:
        torch.save(load_model(source).state_dict(), folder / "pytorch_model.bin")
    else:
        _plant(folder / "pytorch_model.bin", marker)
    return folder


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pwned"


@pytest.mark.parametrize("zip_format", [True, False])
def test_the_planted_pickle_really_runs_code_when_unpickled_unsafely(tmp_path, marker, zip_format):
    path = _plant(tmp_path / "control.bin", marker, zip_format)
    if zip_format:
        torch.load(path, weights_only=False)
    else:  # torch reads a bare pickle as its legacy header: the code runs, then the magic check fails
        with pytest.raises(RuntimeError, match="magic number"):
            torch.load(path, weights_only=False)
    assert marker.exists(), "the control must show that the crafted file is an exploit"


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_malicious_model_is_refused_with_and_without_the_flag(tiny_llama, tmp_path, marker, zip_format):
    folder = _pickle_model(tiny_llama, tmp_path / "evil", marker)
    if not zip_format:
        _plant(folder / "pytorch_model.bin", marker, zip_format=False)
    with pytest.raises(PickleCheckpointError, match="allow_pickle"):
        load_model(str(folder))
    with pytest.raises(UnsafePickleError, match="weights_only=True"):
        load_model(str(folder), allow_pickle=True)
    with pickle_allowed(), pytest.raises(UnsafePickleError):
        load_model(str(folder))
    assert not marker.exists()


def test_a_malicious_adapter_is_refused_with_and_without_the_flag(tiny_llama, tmp_path, marker):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_llama,
                                                             "peft_type": "LORA", "r": 2}))
    _plant(adapter / "adapter_model.bin", marker)
    with pytest.raises(PickleCheckpointError):
        load_model(str(adapter))
    with pytest.raises(UnsafePickleError):
        load_model(str(adapter), allow_pickle=True)
    assert not marker.exists()


def test_other_pickle_files_are_refused_and_never_opened(tmp_path, marker):
    folder = tmp_path / "pt-only"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    _plant(folder / "model.pt", marker)
    with pytest.raises(PickleCheckpointError, match="model.pt"):
        check_weights(str(folder))
    with pytest.raises(UnsafePickleError):
        check_weights(str(folder), allow_pickle=True)
    assert not marker.exists()


def test_safetensors_beside_a_malicious_bin_loads_from_safetensors(tiny_llama, tmp_path, marker):
    folder = tmp_path / "both"
    shutil.copytree(tiny_llama, folder)
    _plant(folder / "pytorch_model.bin", marker)
    assert check_weights(str(folder)) == SAFETENSORS
    model = load_model(str(folder))
    reference = load_model(tiny_llama)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert not marker.exists()


def test_a_benign_pickle_model_loads_only_with_the_flag(tiny_llama, tmp_path):
    folder = _pickle_model(tiny_llama, tmp_path / "benign")
    with pytest.raises(PickleCheckpointError):
        load_model(str(folder))
    assert check_weights(str(folder), allow_pickle=True) == PICKLE
    model, reference = load_model(str(folder), allow_pickle=True), load_model(tiny_llama)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_lm_eval_model_args_are_checked_and_never_trust_remote_code(tiny_llama, tmp_path, marker):
    safe = hf_model_args({"pretrained": tiny_llama, "batch_size": 4})
    assert safe == {"pretrained": tiny_llama, "batch_size": 4, "trust_remote_code": False}
    assert hf_model_args({"pretrained": tiny_llama, "trust_remote_code": True})["trust_remote_code"] is True
    folder = _pickle_model(tiny_llama, tmp_path / "evil", marker)
    with pytest.raises(PickleCheckpointError):
        hf_model_args({"pretrained": str(folder)})
    with pytest.raises(UnsafePickleError):
        hf_model_args({"pretrained": str(folder), "allow_pickle": "true"})
    benign = _pickle_model(tiny_llama, tmp_path / "benign")
    assert "allow_pickle" not in hf_model_args({"pretrained": str(benign), "allow_pickle": True})
    assert not marker.exists()


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("1", True), (0, False), ("No", False)])
def test_the_allow_pickle_flag_parses_booleans(value, expected):
    assert parse_flag("allow_pickle", value) is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, None, 1.5])
def test_the_allow_pickle_flag_rejects_other_values(value):
    with pytest.raises(ConfigError) as info:
        parse_flag("allow_pickle", value)
    assert info.value.field == "allow_pickle"


def test_the_package_never_enables_remote_code_or_unsafe_unpickling():
    offenders = [f"{path.relative_to(PACKAGE)}: {needle}" for path in sorted(PACKAGE.rglob("*.py"))
                 for needle in FORBIDDEN_SOURCE if needle in path.read_text(encoding="utf-8").replace(" ", "")]
    assert offenders == []


def test_a_cached_conversion_without_safetensors_is_not_reused(tmp_path, marker):
    target = tmp_path / "converted"
    target.mkdir()
    (target / CONVERTED_MARKER).write_text("x.gguf")
    _plant(target / "pytorch_model.bin", marker)
    assert not _converted(target)
    save_file({"w": torch.zeros(1)}, str(target / "model.safetensors"))
    assert _converted(target)
    assert not marker.exists()


@pytest.mark.parametrize("gguf, name", [("model.gguf", "../escape"), ("model.gguf", "a/b"), ("model.gguf", ".."),
                                        ("...gguf", None)])
def test_a_conversion_name_cannot_leave_the_cache(tmp_path, gguf, name):
    with pytest.raises(PathEscapeError):
        convert_gguf(tmp_path / gguf, name)


def test_a_planted_training_checkpoint_is_ignored_not_executed(tmp_path, marker, caplog):
    path = _plant(tmp_path / "checkpoint.pt", marker)
    assert read_checkpoint(path) is None
    assert "ignoring unreadable checkpoint" in caplog.text
    assert not marker.exists()


def test_the_training_checkpoint_round_trips_under_weights_only(tmp_path):
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3, betas=(0.8, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    history = {"key": "k", "epochs_run": 1, "train_loss": [0.5], "best_epoch": None, "stopped_early": False}
    trainable = {n: p.detach().clone() for n, p in layer.named_parameters()}
    write_checkpoint(tmp_path / "c.pt", trainable, optimizer, scheduler, history, trainable)
    saved = read_checkpoint(tmp_path / "c.pt")
    assert saved["history"] == history and all(torch.equal(saved["trainable"][n], t) for n, t in trainable.items())
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(saved["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert saved["scheduler"]["last_epoch"] == scheduler.state_dict()["last_epoch"]


def test_restored_rng_states_repeat_the_same_draws(tmp_path):
    torch.save(rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), random.random(), np.random.rand(3))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and np.array_equal(first[2], again[2])


@pytest.mark.parametrize("bad", [{"x": object()}, {(1, 2): 1}, [np.float64(1.0)], {"a": np.zeros(2)}, {"s": {1, 2}}])
def test_a_checkpoint_with_anything_but_plain_values_is_refused_at_write_time(bad):
    with pytest.raises(TypeError, match="checkpoint"):
        plain_state(bad)


def test_model_approx_refuses_a_pickle_finetune_before_any_compute(tiny_llama, tmp_path, marker):
    from lm_eval_approx.harness.approx_model import ApproxLM

    evil = _pickle_model(tiny_llama, tmp_path / "evil-expert", marker)
    corpus = tmp_path / "candidates.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"candidate {i}"}) + "\n" for i in range(8)))
    args = {"base": tiny_llama, "finetuned": str(evil), "corpus": str(corpus), "strategy": "random", "k": 2}
    with pytest.raises(PickleCheckpointError):
        ApproxLM(**args)
    with pytest.raises(UnsafePickleError):
        ApproxLM(**args, allow_pickle="true")
    with pytest.raises(ConfigError):
        ApproxLM(**args, allow_pickle="perhaps")
    assert not marker.exists()
