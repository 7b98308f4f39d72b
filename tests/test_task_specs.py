"""Any lm-eval task as an approximation target: specs rendered by the task's own functions.

The oracle is lm-eval itself: for the documents of a user's task, the (context, continuation)
pairs of our spec equal the ``Instance.args`` that lm-eval's ``build_all_requests`` constructs, and
the token ids we featurise and train on equal those HFLM hands its model for those instances.
Every task here is a YAML file in a temporary folder over local JSONL files; only the token-id
oracle loads a (tiny random) model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm_eval_approx.cli import main
from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.tasks import kinds, lm_eval_spec, lm_eval_tasks
from lm_eval_approx.tasks.lm_eval_spec import TaskKindError, TaskPromptError
from lm_eval_approx.tasks.lm_eval_tasks import TaskLoadError, UnknownTaskError, get_task_spec
from _specs import AGNEWS, MSMARCO

REVIEWS = [("a warm, funny and   moving film", 1), ("dull plot and wooden acting", 0),
           ("I laughed\nthe whole way through", 1), ("two hours I will never get back", 0)]
PASSAGES = ["the river rises in the hills and runs to the sea", "a short note", "prices rose again this spring"]
MC = {"output_type": "multiple_choice", "test_split": "test", "doc_to_choice": ["negative", "positive"],
      "doc_to_target": "label", "target_delimiter": " ", "metric_list": [{"metric": "acc"}],
      "metadata": {"version": 1.0}}


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _data(path: str) -> dict:
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"train": path, "test": path}}}


@pytest.fixture(scope="module")
def user_tasks(tmp_path_factory) -> Path:
    """A folder of task YAML (JSON is YAML) over local JSONL files: good tasks and refusals."""
    root = tmp_path_factory.mktemp("user-tasks")
    reviews = _jsonl(root / "reviews.jsonl", [{"sentence": s, "label": y} for s, y in REVIEWS])
    passages = _jsonl(root / "passages.jsonl", [{"pid": i, "passage": p} for i, p in enumerate(PASSAGES)])
    pairs = _jsonl(root / "pairs.jsonl", [{"title": f"t{i}", "sentence": s, "label": y, "answer": "yes",
                                           "options": ["no", "yes"] if i % 2 else ["yes", "no"]}
                                          for i, (s, y) in enumerate(REVIEWS)])
    rolling = {"output_type": "loglikelihood_rolling", "test_split": "test", "doc_to_text": "",
               "metric_list": [{"metric": "word_perplexity"}], "metadata": {"version": 2.0}}
    last_word = {"output_type": "loglikelihood", "test_split": "test", "metric_list": [{"metric": "perplexity"}],
                 "doc_to_text": "{{ passage.split(' ')[:-1] | join(' ') }}",
                 "doc_to_target": "{{ ' ' + passage.split(' ')[-1] }}", "metadata": {"version": 1.0}}
    tasks = {
        "user_sentiment": {**MC, **_data(reviews), "doc_to_text": "Review: {{sentence}}\nSentiment:"},
        "user_sentiment_fn": {**MC, **_data(reviews), "doc_to_text": "!function prompts.review",
                              "description": "Classify the review.\n\n"},
        "user_two_fields": {**MC, **_data(pairs), "doc_to_text": "{{title}}: {{sentence}}\nSentiment:"},
        "user_declared": {**MC, **_data(pairs), "doc_to_text": "{{title}}: {{sentence}}\nSentiment:",
                          "metadata": {"version": 1.0, "approx": {"text_field": "sentence"}}},
        "user_passages": {**rolling, **_data(passages), "doc_to_target": "{{passage}}"},
        "user_last_word": {**last_word, **_data(passages)},
        "user_all_target": {**last_word, **_data(passages), "doc_to_text": "", "doc_to_target": "{{passage}}"},
        "user_answer": {**last_word, **_data(pairs), "doc_to_text": "Q: {{sentence}}\nA:",
                        "doc_to_target": "{{ ' ' + answer }}"},
        "user_generate": {**_data(reviews), "output_type": "generate_until", "test_split": "test",
                          "doc_to_text": "Review: {{sentence}}\nSentiment:", "doc_to_target": "label",
                          "generation_kwargs": {"until": ["\n"]}, "metric_list": [{"metric": "exact_match"}]},
        "user_per_doc_choices": {**MC, **_data(pairs), "doc_to_text": "Review: {{sentence}}\nSentiment:",
                                 "doc_to_choice": "options"},
        "user_empty_choice": {**MC, **_data(reviews), "doc_to_text": "Review: {{sentence}}\nSentiment:",
                              "doc_to_choice": ["negative", " "]},
        "user_no_choices": {**MC, **_data(reviews), "doc_to_text": "Review: {{sentence}}\nSentiment:",
                            "doc_to_choice": []},
        "user_duplicate_choices": {**MC, **_data(reviews), "doc_to_text": "Review: {{sentence}}\nSentiment:",
                                   "doc_to_choice": ["good", "good"]},
        "user_empty_prompt": {**MC, **_data(reviews), "doc_to_text": "{{ sentence[:0] }}"},
        "user_missing_data": {**MC, **_data(str(root / "no_such_file.jsonl")), "doc_to_text": "{{sentence}}"},
    }
    for name, config in tasks.items():
        text = json.dumps({"task": name, **config}, indent=1)
        (root / f"{name}.yaml").write_text(text.replace('"!function prompts.review"', "!function prompts.review"))
    (root / "prompts.py").write_text('def review(doc):\n    return "Review: " + " ".join(doc["sentence"].split())'
                                     ' + "\\nSentiment:"\n')
    (root / "user_group.yaml").write_text("group: user_group\ntask:\n  - user_sentiment\n  - user_passages\n")
    yield root
    lm_eval_tasks.reset_task_caches()


def _lm_eval_task(folder: Path, name: str):
    return lm_eval_tasks.task_manager((str(folder),), False).load([name])["tasks"][name]


def _requests(task) -> dict[int, list[tuple]]:
    """lm-eval's own requests per document: Instance.args in request order."""
    task.build_all_requests(limit=None, rank=0, world_size=1)
    out: dict[int, list[tuple]] = {}
    for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        out.setdefault(inst.doc_id, []).append(tuple(inst.args))
    return out


def test_both_spec_implementations_have_the_task_spec_interface(user_tasks):
    """``LmEvalTaskSpec`` (every task the pipeline builds) and ``TemplateSpec`` (the in-code twins)
    are ``TaskSpec``s, and what ``get_task_spec`` returns is an ``LmEvalTaskSpec``."""
    built = [get_task_spec(name, include_path=user_tasks) for name in ("user_sentiment", "user_passages")]
    for spec in (AGNEWS, MSMARCO, *built):
        assert isinstance(spec, kinds.TaskSpec), spec
    assert all(isinstance(spec, lm_eval_spec.LmEvalTaskSpec) for spec in built)
    assert not isinstance(object(), kinds.TaskSpec)


def test_the_former_module_of_task_specs_is_gone():
    """Task kinds, ``TaskSpec`` and ``task_key`` live in ``tasks/kinds.py``, ``get_task_spec`` in
    ``tasks/lm_eval_tasks.py``; nothing imports ``tasks/specs.py`` any more."""
    import importlib.util

    assert importlib.util.find_spec("lm_eval_approx.tasks.specs") is None


@pytest.mark.parametrize("name", ["user_sentiment", "user_sentiment_fn"])
def test_multiple_choice_pairs_equal_lm_evals_requests(user_tasks, name):
    spec = get_task_spec(name, include_path=user_tasks)
    assert spec.kind == kinds.CLASSIFICATION and spec.text_field == "sentence" and spec.num_classes == 2
    assert spec.continuations() == [" negative", " positive"] and spec.label_name(1) == "positive"
    task = _lm_eval_task(user_tasks, name)
    requests = _requests(task)
    assert len(requests) == len(REVIEWS)
    for doc_id, doc in enumerate(task.eval_docs):
        ours = [(spec.context(doc["sentence"]), cont) for cont in spec.continuations()]
        assert ours == requests[doc_id]


def _hflm_tokens(folder: str, instances, call: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """The (context ids, continuation ids) HFLM passes to ``_loglikelihood_tokens`` for ``instances``."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=folder, device="cpu", batch_size=4, max_length=max_length)
    seen = []

    def record(requests, **_kwargs):
        seen.extend((list(ctx), list(cont)) for _key, ctx, cont in requests)
        return [(0.0, False)] * len(requests)

    lm._loglikelihood_tokens = record
    getattr(lm, call)(instances, disable_tqdm=True)
    return seen


@pytest.mark.parametrize("name", ["user_sentiment", "user_sentiment_fn", "user_passages"])
def test_token_ids_we_train_and_featurise_are_hflms_for_lm_evals_instances(user_tasks, tiny_llama,
                                                                            one_torch_thread, name):
    """lm-eval builds the instances of a user's task; HFLM tokenises them. The ids of our encoding
    (features, losses, pseudo-labels) and of our training rows, for the same documents under every
    label, are those ids; passages longer than the window are HFLM's rolling windows."""
    from lm_eval_approx.data.selection_file import SelectedExample
    from lm_eval_approx.features.encoding import encode_classification, encode_lm
    from lm_eval_approx.models.loading import load_tokenizer
    from lm_eval_approx.training.rendering import IGNORE_INDEX, render_examples

    spec, task = get_task_spec(name, include_path=user_tasks), _lm_eval_task(user_tasks, name)
    task.build_all_requests(limit=None, rank=0, world_size=1)
    instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))
    tokenizer, field = load_tokenizer(tiny_llama), spec.text_field
    texts = [doc[field] for doc in task.eval_docs]
    if spec.kind == kinds.CLASSIFICATION:
        theirs = _hflm_tokens(tiny_llama, instances, "loglikelihood", 256)
        ours = [encode_classification(tokenizer, spec, t, y, 256) for t in texts for y in range(spec.num_classes)]
        examples = [SelectedExample(id=f"{i}:{y}", text=t, label=y) for i, t in enumerate(texts)
                    for y in range(spec.num_classes)]
        max_length = 256
    else:
        max_length = 9  # HFLM's 8 + 1 (features/encoding.py): every passage spans several windows
        theirs = _hflm_tokens(tiny_llama, instances, "loglikelihood_rolling", max_length - 1)
        ours = [w for t in texts for w in encode_lm(tokenizer, spec, t, max_length)]
        examples = [SelectedExample(id=str(i), text=t) for i, t in enumerate(texts)]
        assert len(ours) > len(texts)
    assert len(theirs) == len(ours) and [(e.ids[:e.start], e.ids[e.start:]) for e in ours] == theirs
    rows = render_examples(tokenizer, spec, examples, max_length)
    assert [(r.input_ids[:r.labels.count(IGNORE_INDEX)], r.labels[r.labels.count(IGNORE_INDEX):]) for r in rows] == theirs


def test_template_and_description_render_through_the_task(user_tasks):
    assert get_task_spec("user_sentiment", user_tasks).template == "Review: {text}\nSentiment:"
    fn = get_task_spec("user_sentiment_fn", user_tasks)
    assert fn.context("  great \n film ") == "Classify the review.\n\nReview: great film\nSentiment:"
    declared = get_task_spec("user_declared", user_tasks)
    assert declared.context("fine") == ": fine\nSentiment:"  # the other fields of a candidate are empty


def test_rolling_text_equals_lm_evals_requests(user_tasks):
    spec = get_task_spec("user_passages", user_tasks)
    assert (spec.kind, spec.text_field, spec.num_classes, spec.continuations()) == (kinds.LANGUAGE_MODELLING,
                                                                                  "passage", 0, [])
    task = _lm_eval_task(user_tasks, "user_passages")
    requests = _requests(task)
    assert [[(spec.context(doc["passage"]),)] for doc in task.eval_docs] == [requests[i] for i in range(len(PASSAGES))]


def test_loglikelihood_with_a_target_from_the_text_is_language_modelling(user_tasks):
    spec = get_task_spec("user_last_word", user_tasks)
    assert spec.kind == kinds.LANGUAGE_MODELLING and spec.text_field == "passage"
    task = _lm_eval_task(user_tasks, "user_last_word")
    requests = _requests(task)
    for doc_id, doc in enumerate(task.eval_docs):
        (context, target), = requests[doc_id]
        assert spec.context(doc["passage"]) == context + target == doc["passage"]


def test_loglikelihood_with_an_empty_context_takes_the_field_of_its_target(user_tasks):
    spec = get_task_spec("user_all_target", user_tasks)
    assert (spec.kind, spec.text_field, spec.context("a b c")) == (kinds.LANGUAGE_MODELLING, "passage", "a b c")


def _mirror_of(tmp_path, monkeypatch, folder: str, rows: list[dict]) -> None:
    for split in ("train", "test"):
        (tmp_path / folder).mkdir(exist_ok=True)
        _jsonl(tmp_path / folder / f"{split}.jsonl", rows)
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(tmp_path))
    lm_eval_tasks.reset_task_caches()


ODD_TEXTS = ["Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's dwindling\\band "
             "of ultra-cynics, are seeing green again.", "  Sox  win\n\tthe pennant  ",
             " ".join(f"word{i}" for i in range(90)), "x y", "Ω东京  مرحبا\u00a0🙂 end"]


def test_shipped_agnews_yaml_renders_what_the_python_spec_rendered(tmp_path, monkeypatch):
    """The migration oracle: tasks/approx_agnews.yaml renders every text exactly as the former
    Python spec (tests/_specs.py), and keeps its cache key, so caches and results/cpu stay valid."""
    _mirror_of(tmp_path, monkeypatch, "ag_news", [{"text": t, "label": i % 4} for i, t in enumerate(ODD_TEXTS)])
    spec = get_task_spec("approx_agnews")
    assert isinstance(spec, lm_eval_spec.LmEvalTaskSpec)
    assert (spec.kind, spec.choices, spec.text_field) == (AGNEWS.kind, AGNEWS.choices, "text")
    assert spec.continuations() == AGNEWS.continuations()
    for text in ODD_TEXTS:
        assert spec.context(text) == AGNEWS.context(text)
    assert kinds.task_key(spec) == "approx_agnews"
    lm_eval_tasks.reset_task_caches()


def test_shipped_msmarco_yamls_render_the_whole_passage_and_share_one_key(tmp_path, monkeypatch):
    _mirror_of(tmp_path, monkeypatch, "msmarco", [{"pid": i, "text": t} for i, t in enumerate(ODD_TEXTS)])
    for name in ("approx_msmarco", "approx_msmarco_last"):
        spec = get_task_spec(name)
        assert spec.kind == MSMARCO.kind
        for text in ODD_TEXTS:
            assert spec.context(text) == MSMARCO.context(text), (name, text)
        assert kinds.task_key(spec) == f"approx_msmarco+{kinds.LM_TEXT_RULE}"
    lm_eval_tasks.reset_task_caches()


def test_editing_a_shipped_yaml_changes_its_key(tmp_path, monkeypatch):
    """The legacy key holds only while the prompt is the pinned one."""
    import shutil

    from lm_eval_approx.tasks import configs_folder

    _mirror_of(tmp_path, monkeypatch, "ag_news", [{"text": t, "label": i % 4} for i, t in enumerate(ODD_TEXTS)])
    edited = tmp_path / "edited"
    edited.mkdir()
    shutil.copy(configs_folder() / "utils.py", edited / "utils.py")
    yaml = (configs_folder() / "approx_agnews.yaml").read_text().replace("Topic:", "Subject:")
    (edited / "approx_agnews_edited.yaml").write_text(yaml.replace("task: approx_agnews", "task: approx_agnews_edited"))
    spec = get_task_spec("approx_agnews_edited", include_path=[str(edited)])
    assert kinds.task_key(spec).startswith("approx_agnews_edited@")
    assert spec.context("a b") == "Article: a b\nSubject:"
    lm_eval_tasks.reset_task_caches()


def test_prompt_identity_follows_the_prompt_not_the_name(user_tasks):
    plain, declared = get_task_spec("user_sentiment", user_tasks), get_task_spec("user_sentiment_fn", user_tasks)
    assert len(plain.prompt_identity()) == 16 and plain.prompt_identity() == plain.prompt_identity()
    assert plain.prompt_identity() != declared.prompt_identity()
    assert plain.prompt_identity() != get_task_spec("user_passages", user_tasks).prompt_identity()


def test_text_field_sources(user_tasks):
    with pytest.raises(TaskPromptError, match="sentence, title") as info:
        get_task_spec("user_two_fields", user_tasks)
    assert info.value.field == "text_field" and "metadata.approx.text_field" in info.value.accepted
    spec = get_task_spec("user_two_fields", user_tasks, text_field="sentence")
    assert spec.text_field == "sentence" and spec.context("ok") == ": ok\nSentiment:"
    with pytest.raises(TaskPromptError, match="declares"):
        get_task_spec("user_declared", user_tasks, text_field="title")
    with pytest.raises(TaskPromptError, match="a field of task 'user_sentiment'"):
        get_task_spec("user_sentiment", user_tasks, text_field="body")
    with pytest.raises(TaskPromptError, match="the same whatever the text"):
        get_task_spec("user_sentiment", user_tasks, text_field="label")


@pytest.mark.parametrize("name, error, match", [
    ("user_generate", TaskKindError, "generate_until"),
    ("user_answer", TaskKindError, "target is derived from the text"),
    ("user_group", TaskKindError, "group of tasks"),
    ("user_per_doc_choices", TaskPromptError, "doc_to_choice"),
    ("user_empty_choice", TaskPromptError, "one is empty"),
    ("user_duplicate_choices", TaskPromptError, "distinct choices"),
    ("user_no_choices", TaskLoadError, "IndexError"),  # lm-eval's own loading fails on an empty list
    ("user_empty_prompt", TaskPromptError, "renders to an empty"),
    ("user_missing_data", TaskLoadError, "no_such_file|FileNotFound|data"),
])
def test_refusals_are_named_errors(user_tasks, name, error, match):
    with pytest.raises(error, match=match) as info:
        get_task_spec(name, user_tasks)
    assert isinstance(info.value, ConfigError) and info.value.field and info.value.accepted


def test_generate_until_error_says_which_kinds_work(user_tasks):
    with pytest.raises(TaskKindError) as info:
        get_task_spec("user_generate", user_tasks)
    assert "multiple_choice" in str(info.value) and "loglikelihood_rolling" in str(info.value)


def test_unknown_task_lists_known_names(user_tasks, monkeypatch):
    real = lm_eval_tasks.task_manager
    monkeypatch.setattr(lm_eval_tasks, "task_manager", lambda paths, include_defaults: real(paths, False))
    with pytest.raises(UnknownNameError, match="Did you mean 'user_sentiment'") as info:
        get_task_spec("user_sentimnt", user_tasks)
    assert {"approx_agnews", "user_passages"} <= set(info.value.known) and "user_group" not in info.value.known


def test_unknown_task_message_stays_short_for_huge_lists():
    error = UnknownTaskError("hellaswg", ["approx_agnews"], [f"task_{i}" for i in range(5000)] + ["hellaswag"])
    assert "Did you mean 'hellaswag'" in str(error) and "and 5001 more" in str(error)
    assert len(str(error)) < 1000 and len(error.known) == 5002


def test_tasks_approximable_lists_kinds_and_reasons(user_tasks, capsys):
    assert main(["tasks", "--approximable", "--json", "--include-path", str(user_tasks)]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["user_sentiment"] == {"name": "user_sentiment", "approximable": True, "kind": "classification",
                                      "text_field": "sentence", "choices": 2, "reason": ""}
    assert rows["approx_agnews"]["approximable"] and rows["approx_agnews"]["choices"] == 4
    assert (rows["user_passages"]["kind"], rows["user_passages"]["text_field"]) == ("lm", "passage")
    assert not rows["user_generate"]["approximable"] and "generate_until" in rows["user_generate"]["reason"]
    assert "metadata.approx.text_field" in rows["user_two_fields"]["reason"]
    assert not rows["user_group"]["approximable"]


def test_cache_keys_record_a_user_task_by_its_prompt_and_a_builtin_by_its_name(tmp_path):
    """Editing a user task's prompt changes what cache keys record of it; in-code specs are names."""
    from lm_eval_approx.tasks.kinds import task_key

    reviews = _jsonl(tmp_path / "reviews.jsonl", [{"sentence": s, "label": y} for s, y in REVIEWS])

    def key(folder: str, prompt: str) -> str:
        root = tmp_path / folder
        root.mkdir()
        config = {"task": "edited_task", **MC, **_data(reviews), "doc_to_text": prompt}
        (root / "edited_task.yaml").write_text(json.dumps(config))
        return task_key(get_task_spec("edited_task", root))

    assert task_key(AGNEWS) == "approx_agnews"
    first = key("a", "Review: {{sentence}}\nSentiment:")
    assert first.startswith("edited_task@")
    assert key("b", "Text: {{sentence}}\nSentiment:") != first
    assert key("c", "Review: {{sentence}}\nSentiment:") == first
    lm_eval_tasks.reset_task_caches()
