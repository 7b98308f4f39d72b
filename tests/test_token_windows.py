"""The paper's MS MARCO metric as an lm-eval task (``approx_msmarco_last32``): last-token windows.

Oracle: a window's context and target, encoded back, are the text's last ``window`` token ids; lm-eval
builds one loglikelihood request per passage from them; and the task refuses to be an
approximation target by name (its target is another field)."""

from __future__ import annotations

import pytest

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.harness.token_windows import last_token_rows, load_msmarco_last_tokens
from lm_eval_approx.models.loading import load_tokenizer

TEXTS = ["the river rises in the hills and runs to the sea.", "a short   note", "x", "",
         "prices rose again this spring, said the bank's chief economist on Tuesday"]


def test_rows_are_the_last_window_tokens(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    rows, retokenised = last_token_rows(TEXTS, tokenizer, 6)
    kept = [t for t in TEXTS if len(tokenizer(" ".join(t.split()), add_special_tokens=False)["input_ids"]) >= 2]
    assert len(rows) == len(kept) < len(TEXTS)
    for row, text in zip(rows, kept):
        ids = tokenizer(" ".join(text.split()), add_special_tokens=False)["input_ids"][-6:]
        assert tokenizer(row["context"] + row["target"], add_special_tokens=False)["input_ids"] == ids
        assert row["target"] == tokenizer.decode(ids[-1:]) and row["context"] == tokenizer.decode(ids[:-1])
    assert retokenised == 0


@pytest.mark.parametrize("kwargs, field", [({"window": 1}, "window"), ({"window": "32"}, "window"),
                                           ({"tokenizer": ""}, "tokenizer")])
def test_bad_window_or_tokenizer_is_a_named_error(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        load_msmarco_last_tokens(**kwargs)


def test_the_task_scores_one_request_per_passage_and_is_not_a_target(mirror, tiny_llama, tmp_path):
    from lm_eval_approx.tasks import configs_folder, lm_eval_tasks
    from lm_eval_approx.tasks.lm_eval_spec import TaskKindError
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

    text = (configs_folder() / "approx_msmarco_last32.yaml").read_text(encoding="utf-8")
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "utils.py").write_text((configs_folder() / "utils.py").read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "tiny_last8.yaml").write_text(
        text.replace("task: approx_msmarco_last32", "task: tiny_last8")
        .replace("{tokenizer: smollm2-135m, window: 32}", f"{{tokenizer: {tiny_llama}, window: 8}}"), encoding="utf-8")
    try:
        task = lm_eval_tasks.task_manager((str(folder),), False).load(["tiny_last8"])["tasks"]["tiny_last8"]
        task.build_all_requests(limit=5, rank=0, world_size=1)
        tokenizer = load_tokenizer(tiny_llama)
        for instance in task.instances:
            context, target = instance.args
            assert 2 <= len(tokenizer(context + target, add_special_tokens=False)["input_ids"]) <= 8
            assert context and target
        assert len(task.instances) == 5
        with pytest.raises(TaskKindError, match="target"):
            get_task_spec("tiny_last8", include_path=str(folder))
    finally:
        lm_eval_tasks.reset_task_caches()
