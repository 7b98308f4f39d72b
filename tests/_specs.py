"""In-code twins of the shipped YAML tasks, for tests that need a task without lm-eval or the data
mirror (tiny tokenizers, synthetic texts). They are ``TemplateSpec``s with the prompt of
tasks/approx_agnews.yaml and tasks/approx_msmarco.yaml; tests/test_task_specs.py proves that the
YAML renders exactly the same strings, and that both keep the cache keys they always had."""

from lm_eval_approx.tasks.kinds import CLASSIFICATION, LANGUAGE_MODELLING
from lm_eval_approx.tasks.template_spec import TemplateSpec

AGNEWS = TemplateSpec(
    name="approx_agnews",
    kind=CLASSIFICATION,
    template="Article: {text}\nTopic:",
    choices=("World", "Sports", "Business", "Sci/Tech"),
    max_words=64,
    description="AG News 4-way topic classification (World, Sports, Business, Sci/Tech)",
)

MSMARCO = TemplateSpec(
    name="approx_msmarco",
    kind=LANGUAGE_MODELLING,
    description="Perplexity of MS MARCO passages (full sequence)",
)
