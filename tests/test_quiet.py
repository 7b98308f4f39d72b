"""Known-benign output of lm-eval, transformers and peft is hidden while a command runs, and shown
with ``-v``; each filter matches one message exactly and leaves nothing installed afterwards."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lm_eval_approx.cli import main
from lm_eval_approx.quiet import LOG_RECORDS, PROGRESS_BARS, WARNINGS, quiet_libraries

ROOT = Path(__file__).resolve().parents[1]
METADATA_HINT = "Custom kwargs can be passed to `--metadata`"


@pytest.fixture
def tiny_agnews(tmp_path, monkeypatch):
    """A data mirror with a few AG News rows, and no task spec cached: approx_agnews loads anew."""
    from lm_eval_approx.tasks.lm_eval_tasks import reset_task_caches

    rows = "".join(json.dumps({"text": f"story {i} on markets and sport", "label": i % 4}) + "\n" for i in range(8))
    (tmp_path / "mirror" / "ag_news").mkdir(parents=True)
    for split in ("train", "test"):
        (tmp_path / "mirror" / "ag_news" / f"{split}.jsonl").write_text(rows, encoding="utf-8")
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(tmp_path / "mirror"))
    reset_task_caches()
    yield
    reset_task_caches()


@pytest.mark.parametrize("verbose", [False, True])
def test_lm_evals_metadata_hint_is_hidden_unless_verbose(tiny_agnews, tmp_path, caplog, capsys, verbose):
    """``train`` loads approx_agnews (its custom_dataset makes lm-eval log the hint), then stops on
    the missing selection file."""
    argv = [*(["-v"] if verbose else []), "train", "--base", "unused", "--task", "approx_agnews",
            "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out")]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 2
    assert "missing.jsonl' does not exist" in capsys.readouterr().err
    hints = [record for record in caplog.records if METADATA_HINT in record.getMessage()]
    assert bool(hints) == verbose
    assert not logging.getLogger("lm_eval.api.task").filters


def _emitted(category, module: str, text: str, verbose: bool = False) -> int:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries(verbose):
            warnings.warn_explicit(text + " (the rest of the message)", category, "library.py", 1, module=module)
    return len(seen)


@pytest.mark.parametrize("category,module,text,why", WARNINGS)
def test_each_warning_filter_matches_its_category_module_and_message_only(category, module, text, why):
    assert why and "\n" not in why
    assert _emitted(category, module, text) == 0
    assert _emitted(category, module, text, verbose=True) == 1
    assert _emitted(category, module + "_other", text) == 1
    assert _emitted(category, "lm_eval_approx.training.model", text) == 1
    assert _emitted(RuntimeWarning, module, text) == 1
    assert _emitted(category, module, "Another message of the same library") == 1


def test_each_log_filter_drops_its_message_only(caplog):
    for name, level, text, why in LOG_RECORDS:
        assert why and "\n" not in why
        logger = logging.getLogger(name)
        with caplog.at_level(logging.DEBUG):
            with quiet_libraries():
                logger.log(level, "task x: %s in console", text)
                logger.log(level, "task x: another warning")
                logger.log(logging.ERROR, "task x: %s", text)
        messages = [record.getMessage() for record in caplog.records if record.name == name]
        assert messages == ["task x: another warning", f"task x: {text}"]
        caplog.clear()
    assert all(not reason.count("\n") for _desc, reason in PROGRESS_BARS)


@pytest.mark.parametrize("verbose", [False, True])
def test_loading_bar_and_checkpointing_deprecation_are_hidden_unless_verbose(tiny_llama, capsys, verbose):
    from lm_eval_approx.models.loading import load_model

    from transformers.utils import logging as hf_logging

    capsys.readouterr()
    shown = hf_logging.is_progress_bar_enabled()  # another test may have turned transformers' bars off
    hf_logging.enable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with quiet_libraries(verbose):
                assert load_model(tiny_llama).is_gradient_checkpointing is False
    finally:
        if not shown:
            hf_logging.disable_progress_bar()
    assert ("Loading weights" in capsys.readouterr().err) == verbose
    assert any("`is_gradient_checkpointing` is deprecated" in str(w.message) for w in seen) == verbose


def test_the_loading_bar_is_hidden_when_transformers_is_imported_inside_the_command(tiny_llama):
    """A command imports transformers only when it computes: the hook goes in at that import, and
    comes out with the command."""
    code = (
        "import sys\n"
        "from lm_eval_approx.quiet import quiet_libraries\n"
        "assert 'transformers' not in sys.modules\n"
        "with quiet_libraries():\n"
        "    from transformers import AutoModelForCausalLM\n"
        f"    AutoModelForCausalLM.from_pretrained({tiny_llama!r})\n"
        "print('-- shown --', file=sys.stderr, flush=True)\n"
        f"AutoModelForCausalLM.from_pretrained({tiny_llama!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hidden, shown = proc.stderr.split("-- shown --")
    assert "Loading weights" not in hidden and "Loading weights" in shown
