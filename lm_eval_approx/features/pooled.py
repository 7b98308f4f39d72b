"""RDS+'s text embedding: θ0's last hidden states, mean-pooled with weights that grow with position.

For a text of T tokens with last-layer hidden states h_1..h_T (after the final norm, as
``hidden_states[-1]`` of a transformers causal LM),

    e = Σ_j j·h_j / Σ_j j,    embedding = e / ‖e‖,

so later tokens, which have seen more of the text, weigh more (SGPT's weighted mean, Muennighoff
2022, as RDS+ uses it: Ivison et al. 2025, ``--pooling weighted_mean``). Only real tokens count:
rows are padded on the tokenizer's padding side and the weights of pad positions are 0.

Texts are embedded raw, not in a task template. Their ids are ``tok_encode`` (``encoding.py``:
HFLM's rule for ``add_bos_token``), cut to the first ``max_length``; an empty text is the prefix
token alone. Texts are batched by length (less padding) and returned in input order, float32.
The batches go to the model's device; the hidden states are upcast to float32 before the weighted
sum, so a bfloat16 model's rows are pooled in float32.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from lm_eval_approx.config_checks import check_int
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.encoding import HFLM_ADD_BOS_TOKEN, prefix_token_id, tok_encode
from lm_eval_approx.features.losses import DEFAULT_BATCH_SIZE, model_device

DEFAULT_POOLED_MAX_LENGTH = 128


def _backbone(model):
    """The transformer body under the LM head (under a PEFT wrapper, adapters active): its
    ``last_hidden_state`` is the causal LM's ``hidden_states[-1]`` without computing V logits per token."""
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(plain, "base_model", plain)
    return body if body is not plain else None


def _pad_id(tokenizer) -> int:
    """The pad id, or EOS / the prefix token when the tokenizer has none (pads are masked out, so
    any id serves; the tokenizer is left as it was)."""
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    return prefix_token_id(tokenizer)


def _batch(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[b, span] = torch.tensor(row, dtype=torch.long)
        mask[b, span] = 1
    return ids, mask


def _last_hidden(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    body = _backbone(model)
    module = body if body is not None else model
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in inspect.signature(module.forward).parameters:
        # Real tokens are at positions 0..T-1 whatever the padding side (left padding would shift them).
        kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
    if body is not None:
        return body(**kwargs).last_hidden_state
    return model(**kwargs, output_hidden_states=True).hidden_states[-1]


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, texts: list[str], batch_size: int = DEFAULT_BATCH_SIZE,
                         max_length: int = DEFAULT_POOLED_MAX_LENGTH,
                         add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> np.ndarray:
    """(len(texts), hidden size) float32 unit rows: the weighted mean of the module docstring."""
    check_int("batch_size", batch_size, minimum=1)
    check_int("max_length", max_length, minimum=1)
    texts = list(texts)
    for pos, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"texts[{pos}]", text, "a string (texts must be a list of strings)")
    prefix = prefix_token_id(tokenizer)
    rows = [tok_encode(tokenizer, t, add_bos_token)[:max_length] or [prefix] for t in texts]
    left = getattr(tokenizer, "padding_side", "right") == "left"
    pad_id = _pad_id(tokenizer)
    device = model_device(model)
    out: np.ndarray | None = None
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        ids, mask = _batch([rows[i] for i in chunk], pad_id, left)
        ids, mask = ids.to(device), mask.to(device)
        hidden = _last_hidden(model, ids, mask).float()
        weights = (mask.cumsum(dim=1) * mask).to(hidden.dtype)  # 1..T on real tokens, 0 on pads
        # torch.where, not a product: a fully masked pad row may hold NaN, and NaN·0 is NaN.
        hidden = torch.where(mask.bool().unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=device))
        pooled = (hidden * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)
        if out is None:
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        out[chunk] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    return out if out is not None else np.zeros((0, model.config.hidden_size), dtype=np.float32)


def base_encoder(base: str, batch_size: int = DEFAULT_BATCH_SIZE, max_length: int = DEFAULT_POOLED_MAX_LENGTH,
                 add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN, *, device: str = "cpu", dtype: str = "float32"):
    """``texts -> pooled_hidden_states`` of the model named ``base``, loaded on ``device`` in ``dtype``
    on the first call and kept for the next (a strategy embeds the pool, then its targets)."""
    from lm_eval_approx.models.loading import load_model, load_tokenizer

    loaded: list = []

    def encode(texts: list[str]) -> np.ndarray:
        if not loaded:
            loaded.extend([load_model(base, dtype, device), load_tokenizer(base)])
        return pooled_hidden_states(loaded[0], loaded[1], texts, batch_size, max_length, add_bos_token=add_bos_token)

    return encode
