"""Data loaders of the approximation tasks (lm-eval's ``custom_dataset`` hook): the offline mirror
of LM_EVAL_APPROX_DATA, else the hub. The prompts live in the YAML files themselves."""

from lm_eval_approx.tasks import data as task_data

load_agnews = task_data.load_agnews
load_msmarco = task_data.load_msmarco
load_wikitext2 = task_data.load_wikitext2


def load_msmarco_last_tokens(**kwargs):
    """The paper's last-token windows of MS MARCO (``harness/token_windows.py``); imported when called,
    since it loads the compared models' tokenizer."""
    from lm_eval_approx.harness.token_windows import load_msmarco_last_tokens as load

    return load(**kwargs)
