"""Prompt functions of the approximation tasks; they call lm_eval_approx.tasks.specs so that lm-eval
scores exactly the text that pseudo-labelling and training render."""

from lm_eval_approx.tasks import data as task_data
from lm_eval_approx.tasks.specs import AGNEWS, MSMARCO

load_agnews = task_data.load_agnews
load_msmarco = task_data.load_msmarco
load_wikitext2 = task_data.load_wikitext2


def agnews_text(doc: dict) -> str:
    return AGNEWS.context(doc["text"])


def agnews_choices(doc: dict) -> list[str]:
    return list(AGNEWS.choices)


def msmarco_text(doc: dict) -> str:
    return MSMARCO.context(doc["text"])


def msmarco_last_context(doc: dict) -> str:
    """Every word of the passage but the last (the LAMBADA-style last-word variant)."""
    return " ".join(MSMARCO.clip(doc["text"]).split()[:-1])


def msmarco_last_word(doc: dict) -> str:
    """The last word with its leading space, as LAMBADA's target: lm-eval builds a loglikelihood
    request as (context, target) and applies no target_delimiter, so without the space the model
    would be asked for the word glued to the previous one."""
    return " " + MSMARCO.clip(doc["text"]).split()[-1]


def wikitext_page(doc: dict) -> str:
    return doc["page"]
