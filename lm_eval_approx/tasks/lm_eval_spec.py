"""Any lm-eval task as an approximation task: the TaskSpec interface, rendered by the task itself.

SELECT needs to turn a raw candidate text into the example the target task scores: a prompt plus
one continuation per label (classification), or a text whose every token is scored (language
modelling). ``LmEvalTaskSpec`` does that for an lm-eval task through the task's OWN functions, so
pseudo-labels, features and training see the strings lm-eval scores:

- **A candidate text becomes a document**: ``{text_field: text}``, every other field of the task's
  documents an empty string (a raw corpus text has no title, no answer, no label). The text field
  comes from the task YAML ``metadata: {approx: {text_field: ...}}``, else the ``text_field``
  argument (both given and different: refused), else is inferred when the prompt uses exactly one
  document field: a plain column name, the variables of a Jinja template, or, for a Python
  prompt function, the sentinel values that come back out of it. The fields looked at are the
  context's (description, ``doc_to_text``, ``gen_prefix``), the target's for a rolling task or a
  loglikelihood task whose context uses none.
- **multiple_choice** → ``classification``: context = ``fewshot_context(doc, num_fewshot=0)``
  (description + ``doc_to_text``, with the task's ``gen_prefix``), continuation of label i =
  ``target_delimiter + doc_to_choice(doc)[i]``, the arguments of lm-eval's own
  ``construct_requests``. The choices must be the same for every document (a constant list, or
  the same list on a few probed documents and two synthetic ones), non-empty and distinct: the
  label of a candidate is an index into them. Multiple-input tasks (one context per choice,
  Winogrande-style) are refused: a candidate text cannot be split into per-choice contexts.
- **loglikelihood_rolling** → ``lm``: the text is ``doc_to_target(doc)``.
- **loglikelihood** → ``lm`` on context + target (what lm-eval feeds the model), only when the
  target renders non-empty from the text field alone, i.e. the task derives it from the text
  (LAMBADA-style last word). Training then scores every token, not just the target's: for such
  tasks the target is part of the text, so the finetune's shift on the text is what SELECT can
  match. A target drawn from another field (an answer column) renders empty from a raw text, so
  the task is refused: no candidate has an answer to score.
- **generate_until** is refused: SELECT needs a fixed per-example loss (log-likelihood of given
  continuations or of the text), and a generation task scores free text with no such loss.

The task's few-shot setting, system instruction and chat template are not applied: the training
examples are single zero-shot documents. ``clip`` returns the text unchanged; the task's own
functions decide what part of it they show.
"""

from __future__ import annotations

import json
from typing import Any

from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.config_checks import check_text
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.tasks.kinds import CLASSIFICATION, LANGUAGE_MODELLING

MULTIPLE_CHOICE = "multiple_choice"
ROLLING = "loglikelihood_rolling"
LOGLIKELIHOOD = "loglikelihood"
GENERATE = "generate_until"
KIND_OF_OUTPUT = {MULTIPLE_CHOICE: CLASSIFICATION, ROLLING: LANGUAGE_MODELLING, LOGLIKELIHOOD: LANGUAGE_MODELLING}
ACCEPTED_KINDS = ("multiple_choice (classification over constant choices), loglikelihood_rolling (perplexity "
                  "of a text), loglikelihood whose target is derived from the text (language modelling)")
# How many real documents of the task are probed for per-document choices.
PROBE_DOCS = 8
# Rendered in place of the text for prompt_identity and ``template``.
PLACEHOLDER = "{text}"
_SENTINELS = ("zqxapproxsentinelone", "zqxapproxsentineltwo")


class TaskKindError(ConfigError):
    """An lm-eval task whose output type or input shape SELECT cannot approximate."""

    def __init__(self, task: str, value: object, why: str):
        self.task = task
        super().__init__("task", task, f"{why}; tasks that work: {ACCEPTED_KINDS} (got {value})")


class TaskPromptError(ConfigError):
    """A task whose prompt cannot turn a raw candidate text into one of its documents."""


def _short(text: object, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def _sentinel(i: int) -> str:
    return f"zqxfield{i}sentinel"


def _jinja_fields(template: str) -> set[str]:
    from jinja2 import meta
    from lm_eval.utils import env

    return set(meta.find_undeclared_variables(env.parse(template)))


def _probe(render, fields: list[str]) -> set[str]:
    """The fields whose sentinel value shows up in ``render``'s output (case-insensitive): all
    fields set at once, else (when the prompt fails on that document) one field at a time."""
    def shown(doc: dict, indices) -> set[str]:
        out = str(render(doc)).lower()
        return {fields[i] for i in indices if _sentinel(i) in out}

    try:
        return shown({f: _sentinel(i) for i, f in enumerate(fields)}, range(len(fields)))
    except Exception:  # a prompt function that needs real values: probe one field at a time
        used = set()
        for i, f in enumerate(fields):
            try:
                used |= shown({g: (_sentinel(i) if g == f else "") for g in fields}, [i])
            except Exception:
                continue
        return used


def _prompt_parts(task) -> dict[str, tuple[Any, Any]]:
    """(config value, render function) of each part of a prompt a candidate text can enter."""
    cfg = task.config
    return {
        "doc_to_text": (cfg.doc_to_text, task.doc_to_text),
        "doc_to_target": (cfg.doc_to_target, task.doc_to_target),
        "description": (cfg.description, lambda doc: task.resolve_field(doc, cfg.description) or ""),
        "gen_prefix": (cfg.gen_prefix, task.doc_to_prefix),
    }


def _fields_of(raw, render, fields: list[str]) -> set[str]:
    if raw is None or raw == "" or isinstance(raw, int):
        return set()
    if isinstance(raw, str):
        return {raw} if raw in fields else (_jinja_fields(raw) & set(fields) if fields else _jinja_fields(raw))
    return _probe(render, fields) if fields else set()


def prompt_fields(task, output_type: str, fields: list[str]) -> list[str]:
    """The document fields the task's prompt renders, sorted: those of the target for a rolling
    task, else those of the context (description, doc_to_text, gen_prefix); a loglikelihood task
    whose context uses none falls back to its target's (the text is then all target)."""
    parts = _prompt_parts(task)
    context = ("doc_to_text", "description", "gen_prefix")
    used = set().union(*(_fields_of(*parts[p], fields) for p in context)) if output_type != ROLLING else set()
    if output_type == ROLLING or (output_type == LOGLIKELIHOOD and not used):
        used = _fields_of(*parts["doc_to_target"], fields)
    return sorted(used)


def resolve_text_field(task, name: str, output_type: str, text_field: str | None) -> str:
    """The document field a candidate text fills (see the module docstring for the order)."""
    fields = list(getattr(task, "features", None) or [])
    metadata = getattr(task.config, "metadata", None) or {}
    approx = metadata.get("approx") if isinstance(metadata, dict) else None
    declared = approx.get("text_field") if isinstance(approx, dict) else None
    if declared is not None:
        check_text("metadata.approx.text_field", declared, "a document field name")
        if text_field is not None and text_field != declared:
            raise TaskPromptError("text_field", text_field, f"{declared!r}, the text field task {name!r} declares "
                                                           "in metadata.approx.text_field, or nothing")
    chosen = declared if declared is not None else text_field
    if chosen is not None:
        check_text("text_field", chosen, "a document field name")
        if fields and chosen not in fields:
            raise TaskPromptError("text_field", chosen, f"a field of task {name!r}'s documents: {', '.join(fields)}")
        return chosen
    used = prompt_fields(task, output_type, fields)
    if len(used) == 1:
        return used[0]
    candidates = ", ".join(used or fields) or "(the task's documents name no fields)"
    why = "uses several document fields" if used else "uses no document field that could be found"
    raise TaskPromptError("text_field", None, f"the field a candidate text fills: the prompt of task {name!r} {why}; "
                          f"set metadata.approx.text_field in its YAML or pass text_field, one of: {candidates}")


def _check_choices(name: str, choices: object) -> tuple[str, ...]:
    if not isinstance(choices, (list, tuple)) or not choices or not all(isinstance(c, str) for c in choices):
        raise TaskPromptError("doc_to_choice", _short(choices), f"a non-empty list of strings for task {name!r}")
    if any(not c.strip() for c in choices):
        raise TaskPromptError("doc_to_choice", list(choices), f"choices of task {name!r} with text in each (one is empty)")
    if len(set(choices)) != len(choices):
        raise TaskPromptError("doc_to_choice", list(choices), f"distinct choices for task {name!r} (a label must "
                                                              "name one continuation)")
    return tuple(choices)


def constant_choices(task, name: str, synthetic_docs: list[dict]) -> tuple[str, ...]:
    """The task's choices, which must not depend on the document: a constant list, or the same list
    on the synthetic documents and the first ``PROBE_DOCS`` real ones."""
    raw = task.config.doc_to_choice
    if isinstance(raw, (list, tuple)):
        return _check_choices(name, list(raw))
    if isinstance(raw, dict):
        return _check_choices(name, list(raw.values()))
    docs = list(synthetic_docs)
    for i, doc in enumerate(task.eval_docs):
        if i >= PROBE_DOCS:
            break
        docs.append(doc)
    seen = []
    for doc in docs:
        try:
            seen.append(task.doc_to_choice(doc))
        except Exception as exc:
            raise TaskPromptError("doc_to_choice", _short(raw), f"choices that render for a raw text document of "
                                  f"task {name!r} ({type(exc).__name__}: {exc})") from exc
    first = _check_choices(name, seen[0])
    for other in seen[1:]:
        if not isinstance(other, (list, tuple)) or tuple(other) != first:
            raise TaskPromptError("doc_to_choice", _short(raw), f"the same choices for every document of task "
                                  f"{name!r}: they differ ({list(first)} vs {_short(other)})")
    return first


def _no_target(doc, *args, **kwargs) -> str:
    return ""


class LmEvalTaskSpec:
    """The ``TaskSpec`` interface (``tasks/kinds.py``) of one lm-eval task, rendered by the task
    object itself; ``task``, ``text_field`` and ``doc`` give the task's own documents."""

    def __init__(self, task, name: str, output_type: str, text_field: str, choices: tuple[str, ...]):
        self.task, self.name, self.output_type, self.text_field = task, name, output_type, text_field
        self.kind = KIND_OF_OUTPUT[output_type]
        self.choices = choices
        self.target_delimiter = str(task.config.target_delimiter) if choices else ""
        self.prompt_description = str(task.config.description or "")
        self.version = str(getattr(task, "VERSION", "") or "")
        self.fields = list(getattr(task, "features", None) or [])
        self.description = f"lm-eval task {name} ({output_type}, text field {text_field!r})"

    @property
    def num_classes(self) -> int:
        return len(self.choices)

    def doc(self, text: str) -> dict:
        """The task document a candidate text becomes: the text in the text field, others empty."""
        doc = {field: "" for field in self.fields}
        doc[self.text_field] = self.clip(text)
        return doc

    def clip(self, text: str) -> str:
        """The text unchanged (as a string): the task's own prompt decides what it shows."""
        return str(text)

    def _render(self, doc: dict) -> object:
        task = self.task
        if self.output_type == ROLLING:
            return task.doc_to_target(doc)
        if self.output_type == MULTIPLE_CHOICE:
            # lm-eval's fewshot_context renders doc_to_target and discards it at zero shots; a
            # candidate has no label, so a target template such as {{choices[label]}} must not run.
            task.doc_to_target = _no_target
            try:
                return task.fewshot_context(doc=doc, num_fewshot=0, gen_prefix=task.doc_to_prefix(doc))
            finally:
                del task.doc_to_target
        context = task.fewshot_context(doc=doc, num_fewshot=0, gen_prefix=task.doc_to_prefix(doc))
        if self.output_type == LOGLIKELIHOOD:
            target = task.doc_to_target(doc)
            return context + target if isinstance(context, str) and isinstance(target, str) else target
        return context

    def context(self, text: str) -> str:
        """The prompt of a document (classification) or the text lm-eval scores (language modelling)."""
        try:
            rendered = self._render(self.doc(text))
        except Exception as exc:
            raise TaskPromptError("text", _short(text), f"a text that task {self.name!r}'s prompt renders "
                                  f"({type(exc).__name__}: {exc})") from exc
        if not isinstance(rendered, str):
            raise TaskPromptError("text", _short(text), f"a text that task {self.name!r}'s prompt renders to a "
                                  f"string (got {type(rendered).__name__})")
        return rendered

    def continuations(self) -> list[str]:
        """The scored continuation of each label, in label order (delimiter included)."""
        return [self.target_delimiter + choice for choice in self.choices]

    def label_name(self, label: int) -> str:
        return self.choices[label] if 0 <= label < len(self.choices) else str(label)

    @property
    def template(self) -> str:
        """The prompt with ``{text}`` in place of the candidate text."""
        return self.context(PLACEHOLDER)

    def prompt_identity(self) -> str:
        """A hash of everything that decides the rendered examples: the rendered template, output
        type, text field, choices, delimiter, description and task version (not the name)."""
        payload = {"template": self.template, "output_type": self.output_type, "text_field": self.text_field,
                   "choices": list(self.choices), "target_delimiter": self.target_delimiter,
                   "description": self.prompt_description, "version": self.version}
        return short_hash(json.dumps(payload, sort_keys=True))

    def __repr__(self) -> str:
        return f"LmEvalTaskSpec(name={self.name!r}, kind={self.kind!r}, text_field={self.text_field!r})"


def _check_renders(spec: LmEvalTaskSpec) -> None:
    """The text must enter the rendered example, which must not be empty."""
    first, second = (spec.context(s) for s in _SENTINELS)
    if not first.strip():
        raise TaskPromptError("text_field", spec.text_field, f"a field that task {spec.name!r}'s prompt renders to a "
                              "non-empty string (it renders to an empty one)")
    if first == second:
        raise TaskPromptError("text_field", spec.text_field, f"a field that task {spec.name!r}'s prompt shows (the "
                              "rendered example is the same whatever the text)")
    if spec.output_type == LOGLIKELIHOOD:
        target = spec.task.doc_to_target(spec.doc(_SENTINELS[0]))
        if not isinstance(target, str) or not target.strip():
            raise TaskKindError(spec.name, f"{LOGLIKELIHOOD} with a target that a raw text does not supply",
                                "a loglikelihood task works only when its target is derived from the text field, "
                                f"and the target of {spec.name!r} renders {_short(target)!r} from a raw text")


def spec_from_task(task, text_field: str | None = None) -> LmEvalTaskSpec:
    """The approximation spec of a loaded lm-eval task object, or a named refusal."""
    name = str(getattr(task.config, "task", None) or getattr(task, "task_name", "task"))
    output_type = str(getattr(task, "OUTPUT_TYPE", None) or getattr(task.config, "output_type", ""))
    if output_type == GENERATE:
        raise TaskKindError(name, output_type, "a generate_until task scores free generation, which gives SELECT no "
                            "per-example log-likelihood to pseudo-label or take gradients of")
    if output_type not in KIND_OF_OUTPUT:
        raise TaskKindError(name, output_type, f"output_type must be one of {', '.join(KIND_OF_OUTPUT)}")
    if getattr(task, "multiple_input", 0):
        raise TaskKindError(name, "multiple inputs", "a multiple-input task puts each choice in its own context, "
                            "and a raw candidate text cannot be split into one context per choice")
    field = resolve_text_field(task, name, output_type, text_field)
    spec = LmEvalTaskSpec(task, name, output_type, field, ())
    if output_type == MULTIPLE_CHOICE:
        synthetic = [spec.doc(s) for s in _SENTINELS]
        spec = LmEvalTaskSpec(task, name, output_type, field, constant_choices(task, name, synthetic))
    _check_renders(spec)
    return spec
