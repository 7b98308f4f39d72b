"""In-code twins of the shipped YAML tasks, for tests that need a task without lm-eval or the data
mirror (tiny tokenizers, synthetic texts). They are ``TaskSpec``s with the prompt of
tasks/approx_agnews.yaml and tasks/approx_msmarco.yaml; tests/test_task_specs.py proves that the
YAML renders exactly the same strings, and that both keep the cache keys they always had."""

from lm_eval_approx.tasks.specs import CLASSIFICATION, LANGUAGE_MODELLING, TaskSpec

AGNEWS = TaskSpec(
    name="approx_agnews",
    kind=CLASSIFICATION,
    template="Article: {text}\nTopic:",
    choices=("World", "Sports", "Business", "Sci/Tech"),
    max_words=64,
    corpus="ag_news",
    description="AG News 4-way topic classification (World, Sports, Business, Sci/Tech)",
)

MSMARCO = TaskSpec(
    name="approx_msmarco",
    kind=LANGUAGE_MODELLING,
    corpus="msmarco",
    description="Perplexity of MS MARCO passages (full sequence)",
)
