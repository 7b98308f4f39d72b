"""The paper's MS MARCO metric as an lm-eval task: perplexity of the last token of each passage's
last ``window`` tokens (left-truncated windows of 32 tokens in Morris et al., 2025).

The window is counted in the tokens of the models compared, so the loader needs their tokenizer:
``dataset_kwargs: {tokenizer: smollm2-135m, window: 32}`` in the task YAML (any name
``load_tokenizer`` accepts: the alias, a folder, a .gguf file). Each passage, whitespace-normalised
as ``approx_msmarco`` scores it, is encoded without special tokens; its last ``window`` ids are
decoded into ``context`` (all but the last) and ``target`` (the last). lm-eval then scores
log p(target | context) as a ``loglikelihood`` request and reports ``perplexity`` =
exp(−mean log-likelihood) over passages. A passage of fewer than two tokens has no window and is
dropped. Decoding and re-encoding can merge tokens differently at the cut; the loader counts how
often ``target`` does not re-encode to the single last token (``rows_retokenised`` in the log).
"""

from __future__ import annotations

import logging

from lm_eval_approx.config_checks import check_int
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.loading import load_tokenizer
from lm_eval_approx.tasks.dataset_loaders import load_msmarco

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "smollm2-135m"
DEFAULT_WINDOW = 32


def last_token_rows(texts, tokenizer, window: int) -> tuple[list[dict], int]:
    """(context, target) rows of the texts' last-token windows, and how many re-encode differently."""
    rows, retokenised = [], 0
    for text in texts:
        ids = tokenizer(" ".join(str(text).split()), add_special_tokens=False)["input_ids"][-window:]
        if len(ids) < 2:
            continue
        context, target = tokenizer.decode(ids[:-1]), tokenizer.decode(ids[-1:])
        whole = tokenizer(context + target, add_special_tokens=False)["input_ids"]
        retokenised += whole[-1:] != ids[-1:] or len(whole) != len(ids)
        rows.append({"context": context, "target": target})
    return rows, retokenised


def load_msmarco_last_tokens(tokenizer: str = DEFAULT_TOKENIZER, window: int = DEFAULT_WINDOW, **_metadata):
    """MS MARCO train/test as last-token windows: ``context`` and ``target`` per passage."""
    import datasets

    check_int("dataset_kwargs.window", window, minimum=2, accepted="an integer ≥ 2 (tokens per window)")
    if not isinstance(tokenizer, str) or not tokenizer:
        raise ConfigError("dataset_kwargs.tokenizer", tokenizer, "the name of the compared models' tokenizer "
                          f"(e.g. {DEFAULT_TOKENIZER!r}, a model folder or a .gguf file)")
    tok = load_tokenizer(tokenizer)
    out = {}
    for split, data in load_msmarco().items():
        rows, retokenised = last_token_rows(data["text"], tok, window)
        logger.info("msmarco %s: %d last-token windows of %d tokens (rows_retokenised %d)", split, len(rows),
                    window, retokenised)
        out[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(out)
