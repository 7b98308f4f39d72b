"""Data loaders of the approximation tasks (lm-eval's ``custom_dataset`` hook): the offline mirror
of LM_EVAL_APPROX_DATA, else the hub. The prompts live in the YAML files themselves."""

from lm_eval_approx.tasks import dataset_loaders

load_agnews = dataset_loaders.load_agnews
load_msmarco = dataset_loaders.load_msmarco
load_wikitext2 = dataset_loaders.load_wikitext2


def load_msmarco_last_tokens(**kwargs):
    """The paper's last-token windows of MS MARCO (``harness/token_windows.py``); imported when called,
    since it loads the compared models' tokenizer."""
    from lm_eval_approx.harness.token_windows import load_msmarco_last_tokens as load

    return load(**kwargs)
