"""Per-example gradient factors of the task loss, for the output head or any set of linear layers.

A linear layer y_t = W x_t (W: out×in) has per-example gradient ∇W = Σ_t δ_t x_tᵀ with
δ_t = ∂L/∂y_t. This module returns the factors (Δ, X) — never ∇W itself — for each example:

- ``head``: one forward pass, no backward. With logits z_t = W h_t and the loss of
  ``losses.batch_losses`` (weight w_t per loss token y_{t+1}, predicted by position t),
  δ_t = w_t (softmax(z_t) − onehot(y_{t+1})) and x_t = h_t, the input of the head at the *same*
  position t (the released code of the paper pairs t with t+1: an off-by-one avoided here).
  The head gradient is the one of the head's use only, also when the head is tied to the input
  embedding (SmolLM2, GPT-2).
- A document cut into several rolling windows (language modelling, ``encoding.py``) has the
  gradient Σ_windows Σ_t δ_t x_tᵀ: ``merge_windows`` concatenates its windows' factor rows into one
  example, which is exact for the projection and for ‖G‖² alike.
- ``changed`` / explicit names: one forward and one backward with every weight frozen; forward
  hooks keep each layer's input x_t and the backward returns δ_t = ∂(Σ_i L_i)/∂y_t, which is
  example i's own δ because examples do not interact. The backward starts from the head's δ above
  (the loss's gradient at the logits, in closed form), and where the model allows, the head runs
  at the loss positions only, as for ``head``. Padded positions (right padding, causal
  attention) reach no loss, so their δ is exactly 0 and they add nothing to G = Σ_t δ_t x_tᵀ
  nor to the exact ‖G‖²; the head path zeroes its unused slots explicitly. A layer that runs on
  the tokens flattened to (B·T, width) (OPT's MLP) is reshaped back to (B, T, width); any other
  layout is a ``LayerShapeError`` naming the layer.

Layers are those of ``models/layers.py`` (factors always in the out×in orientation); a PEFT LoRA
layer's gradient is taken with respect to the effective weight W + s·B A (the parameter whose
change θf − θ0 = s·B A is the LoRA update).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.features.encoding import Batch, gather_positions
from lm_eval_approx.models.layers import resolve_modules
from lm_eval_approx.models.head_positions import HeadPositionsError, causal_lm, supports_head_positions


# Picks each row's loss targets from the float logits at its loss positions, (B, R, V), read in the
# same forward that yields the factors (``features/fused.py``: θf's pseudo-label of a classification
# example); returns the batch whose targets and weights the loss then reads.
Choose = Callable[[Batch, torch.Tensor], Batch]


@dataclass
class LayerFactors:
    """Per-example factors of one layer: G_b = Σ_r delta[b, r] x[b, r]ᵀ (out×in), zero rows unused."""

    delta: torch.Tensor
    x: torch.Tensor

    def gradient(self) -> torch.Tensor:
        """The materialised per-example gradients (B, out, in) — for oracles and small layers only."""
        return torch.einsum("bro,bri->boi", self.delta, self.x)

    def sqnorm(self) -> torch.Tensor:
        """‖G_b‖² = Σ_{r,r'} (x_r·x_r')(δ_r·δ_r'), exact, without forming G_b."""
        return ((self.x @ self.x.transpose(1, 2)) * (self.delta @ self.delta.transpose(1, 2))).sum(dim=(1, 2))


def total_sqnorm(factors: dict[str, LayerFactors]) -> torch.Tensor:
    """Σ over layers of the exact ‖G_b‖²; layers fed the same input (q/k/v, gate/up) share X Xᵀ."""
    grams: dict[tuple, torch.Tensor] = {}
    total = None
    for f in factors.values():
        key = tensor_key(f.x)
        if key not in grams:
            grams[key] = row_gram(f.x)
        term = (grams[key] * row_gram(f.delta)).sum(dim=(1, 2))
        total = term if total is None else total + term
    return total  # type: ignore[return-value]  # factors holds at least one layer


GRAM_ALIGN = 16
GRAM_BLOCK = 64
# Below this row width a product is too cheap for the block loop's own cost.
GRAM_BLOCK_MIN_WIDTH = 512


def row_gram(t: torch.Tensor) -> torch.Tensor:
    """t tᵀ per example, (B, R, W) → (B, R, R), on CPU in two ways that MKL runs faster than the plain
    batched product (every entry is still one dot product of two rows):

    - Symmetry: for R > 32 and rows of 512 floats or more, only the blocks on and below the diagonal
      are multiplied, one block column at a time (rows lo..R against rows lo..lo+n), and mirrored:
      ~R²/2 + nR/2 dot products instead of R². n = 64, or 32 for R ≤ 64, where narrower products
      lose to MKL's efficiency what they save (measured, one thread, 8,192-float rows: R = 63, 7%
      faster; R = 255, 20%).
    - Alignment: an operand whose row count is just short of a multiple of 16 (R = 63, 127: the
      loss positions of full 64- and 128-token windows) runs ~1.5× slower than the next multiple
      (AVX-512). Such operands are read with their rows rounded up, the extra rows those adjacent
      in memory, whose entries are dropped: the first half of the batch reads ahead into the next
      example, the second half back into the previous one, two batched products with no example
      left alone (a lone product parallelises badly)."""
    b, r, w = t.shape
    if t.device.type != "cpu" or b < 2 or not t.is_contiguous():
        return t @ t.transpose(1, 2)
    if r > GRAM_BLOCK // 2 and w >= GRAM_BLOCK_MIN_WIDTH:
        block = GRAM_BLOCK if r > GRAM_BLOCK else GRAM_BLOCK // 2
        out = t.new_empty(b, r, r)
        for lo in range(0, r, block):
            hi = min(lo + block, r)
            part = _aligned_product(t, lo, lo, hi)
            out[:, lo:, lo:hi] = part
            out[:, lo:hi, hi:] = part[:, hi - lo:].transpose(1, 2)
        return out
    pad = -r % GRAM_ALIGN
    if pad == 0 or pad * GRAM_ALIGN > r:
        return t @ t.transpose(1, 2)
    return _aligned_product(t, 0, 0, r)


def _aligned_product(t: torch.Tensor, row_lo: int, col_lo: int, col_hi: int) -> torch.Tensor:
    """Rows row_lo..R of each example times rows col_lo..col_hi transposed, (B, R − row_lo, col_hi −
    col_lo), each operand read with its row count rounded up to GRAM_ALIGN (``row_gram``); ``t`` is
    contiguous with B ≥ 2, so the rows read past an example's ends are those of its neighbours."""
    b, r, w = t.shape
    half, m, n = b // 2, r - row_lo, col_hi - col_lo
    mp, np_ = m + (-m % GRAM_ALIGN), n + (-n % GRAM_ALIGN)

    def rows(first: int, count: int, start: int, length: int) -> torch.Tensor:
        return t.as_strided((count, length, w), (r * w, w, 1), t.storage_offset() + (first * r + start) * w)

    ahead = rows(0, half, row_lo, mp) @ rows(0, half, col_lo, np_).transpose(1, 2)
    behind = rows(half, b - half, r - mp, mp) @ rows(half, b - half, col_hi - np_, np_).transpose(1, 2)
    return torch.cat([ahead[:, :m, :n], behind[:, mp - m:, np_ - n:]])


def tensor_key(tensor: torch.Tensor) -> tuple:
    """Identifies a tensor's data (hooks hand out a new tensor object per call for the same data;
    layers fed one input share it)."""
    return tensor.data_ptr(), tuple(tensor.shape), tensor.stride()


def merge_windows(loss: torch.Tensor, factors: dict[str, LayerFactors],
                  counts: list[int]) -> tuple[torch.Tensor, dict[str, LayerFactors]]:
    """Per-document loss and factors from per-window ones, ``counts[i]`` consecutive windows per
    document: losses add, factor rows concatenate (zero rows pad the shorter documents). Layers that
    shared an input tensor still share the merged one."""
    if all(c == 1 for c in counts):
        return loss, factors
    owner = torch.repeat_interleave(torch.arange(len(counts), device=loss.device),
                                    torch.as_tensor(counts, device=loss.device))
    merged_loss = torch.zeros(len(counts), dtype=loss.dtype, device=loss.device).index_add(0, owner, loss)

    def merge(t: torch.Tensor) -> torch.Tensor:
        docs = [part.reshape(-1, t.shape[-1]) for part in torch.split(t, counts)]
        return torch.nn.utils.rnn.pad_sequence(docs, batch_first=True)

    shared: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, f in factors.items():
        key = tensor_key(f.x)
        if key not in shared:
            shared[key] = merge(f.x)
        out[name] = LayerFactors(merge(f.delta), shared[key])
    return merged_loss, out


def head_factors(model: nn.Module, batch: Batch, head: str, full_logits: bool = False,
                 choose: Choose | None = None) -> tuple[torch.Tensor, dict[str, LayerFactors]]:
    """Per-example loss and head factors from one forward pass (see the module docstring).

    Where the model takes ``logits_to_keep`` as (B, R) positions, the head runs only at the R loss
    positions (the hook then sees the gathered inputs): for a 128-token document and a 3-token label
    that skips ~98% of the head's work, a fifth of SmolLM2's forward. ``full_logits=True`` is the
    reference path (every position, gathered afterwards), which the tests hold the fast one to.
    A model that transforms the head's output into its logits (Gemma2's soft-capping) gets δ through
    that transform (``head_output_delta``). ``choose`` (see ``Choose``) picks each row's targets from
    the logits of this very forward, before δ is formed."""
    module = resolve_modules(model, [head])[head]
    at_positions = not full_logits and supports_head_positions(model)
    with head_capture(model, module) as captured:
        if at_positions:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           logits_to_keep=batch.positions).logits
        else:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits

    def select(values: torch.Tensor) -> torch.Tensor:
        return values if at_positions else gather_positions(values, batch.positions)

    with torch.no_grad():
        z = select(logits).float()
        check_positions(model, z, batch)
        batch = batch if choose is None else choose(batch, z)
        # δ may take z's memory unless z is logits that head_output_delta still differentiates
        loss, delta = loss_and_delta(z.detach(), batch, overwrite=z is not logits or logits is captured["output"])
    delta = head_output_delta(logits, captured["output"], select, delta)
    used = (batch.weights > 0).unsqueeze(-1).float()
    x = select(captured["input"]).detach().float() * used
    return loss, {head: LayerFactors(delta, x)}


def check_positions(model: nn.Module, z: torch.Tensor, batch: Batch) -> None:
    """Raises ``HeadPositionsError`` unless ``z`` holds one logit row per loss position."""
    if z.shape[:2] != batch.positions.shape:
        raise HeadPositionsError(f"{type(model).__name__} returned logits of shape {tuple(z.shape)} for "
                                 f"logits_to_keep positions of shape {tuple(batch.positions.shape)}")


def loss_and_delta(z: torch.Tensor, batch: Batch, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and δ_z = ∂loss/∂z = w (softmax(z) − onehot(y)) from float logits (B, R, V) at the
    loss positions, with one pass of exponentials: those of the log-sum-exp serve the softmax. The
    loss takes the operations of ``torch.logsumexp`` in their order (max, shifted exp, sum, log), so
    it equals ``losses.batch_losses`` bit for bit. ``overwrite`` builds δ in z's own memory: on CPU
    a fresh (B, R, V) buffer can cost more than the exponentials (page faults on first touch)."""
    weights = batch.weights.unsqueeze(-1)
    targets = batch.targets.unsqueeze(-1)
    picked = z.gather(-1, targets)
    top = z.amax(dim=-1, keepdim=True)
    top.masked_fill_(top.abs() == math.inf, 0)
    exp = (z.sub_(top) if overwrite else z - top).exp_()
    total = exp.sum(dim=-1, keepdim=True)
    nll = total.log().add_(top) - picked
    loss = (nll.squeeze(-1) * batch.weights).sum(dim=1)
    delta = exp.mul_(weights / total).scatter_add_(-1, targets, -weights)
    return loss, delta


@contextlib.contextmanager
def head_capture(model: nn.Module, module: nn.Module):
    """Runs the forward inside with every weight frozen and keeps the head's input and output: the
    output is made a graph leaf, so ``head_output_delta`` can differentiate whatever the model does to
    it after the head. Nothing before the head requires grad, so the body builds no graph."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, args, out):
        captured["input"] = args[0]
        captured["output"] = out.requires_grad_(True)

    handle = module.register_forward_hook(hook)
    try:
        with frozen(model), torch.enable_grad():
            yield captured
    finally:
        handle.remove()


def head_output_delta(logits: torch.Tensor, head_out: torch.Tensor, select, delta_z: torch.Tensor) -> torch.Tensor:
    """δ with respect to the head's output u, given δ with respect to z = select(logits).float(), the
    logits the loss reads (``select`` picks the loss entries of a logits-shaped tensor).

    Most models return the head's output as their logits, and δ_u = δ_z. Gemma2 returns
    z = c·tanh(u/c) (``final_logit_softcapping``), whose derivative 1 − (z/c)² would be lost by a
    gradient taken at z; a model's elementwise tail after the head is therefore differentiated by
    autograd, on the (B, R, V) loss entries only."""
    if logits is head_out:
        return delta_z
    with torch.enable_grad():  # the caller may run under no_grad; the graph was recorded in head_capture
        z = select(logits).float()
        (grad,) = torch.autograd.grad(z, head_out, grad_outputs=delta_z)
    return select(grad).float()


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Every parameter frozen (no weight gradients are ever computed), restored afterwards."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def layer_factors(model: nn.Module, batch: Batch, names: list[str], full_logits: bool = False,
                  choose: Choose | None = None) -> tuple[torch.Tensor, dict[str, LayerFactors]]:
    """Per-example loss and factors of the named layers: forward + one backward, weights frozen.

    The backward starts from δ_z of ``loss_and_delta`` at the logits the loss reads (autograd carries
    it through any transform after the head, Gemma2's soft-capping), not from the loss, whose own
    backward would run over the full vocabulary at every position. Where the model takes
    ``logits_to_keep`` positions the head runs at the loss positions only (``head_factors``), and the
    head's factors, when it is among ``names``, have one row per loss position; ``full_logits=True``
    is the reference path, which the tests hold the fast one to. ``choose`` as in ``head_factors``."""
    modules = resolve_modules(model, names)
    at_positions = not full_logits and supports_head_positions(model)
    head = causal_lm(model).get_output_embeddings()
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, args, out):
            if name in outputs:
                raise ConfigError("params", name, "layers that run once per forward pass")
            inputs[name], outputs[name] = args[0].detach(), out
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    head_out: list[torch.Tensor] = []
    if head is not None:
        handles.append(head.register_forward_hook(lambda _m, _a, out: head_out.append(out)))
    embed = model.get_input_embeddings()  # type: ignore[operator]  # nn.Module types attributes as Tensor | Module
    handles.append(embed.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True)))
    try:
        with frozen(model), torch.enable_grad():
            if at_positions:
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               logits_to_keep=batch.positions).logits
                z = logits.float()
                check_positions(model, z, batch)
            else:
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                z = gather_positions(logits, batch.positions).float()
            # δ may take z's memory where z's backward does not read z: a copy made here, or the head's
            # own output (a linear layer's backward reads its input and weight only)
            overwrite = z is not logits or any(logits is out for out in head_out)
            with torch.no_grad():
                batch = batch if choose is None else choose(batch, z.detach())
                loss, delta_z = loss_and_delta(z.detach(), batch, overwrite=overwrite)
            grads = torch.autograd.grad(z, [outputs[n] for n in names], grad_outputs=delta_z, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    tokens = tuple(batch.input_ids.shape)
    per_token: dict[tuple, torch.Tensor] = {}  # layers fed one input keep sharing it (total_sqnorm, project)
    factors = {}
    for name, grad in zip(names, grads):
        rows = tuple(batch.positions.shape) if at_positions and modules[name] is head else tokens
        key = tensor_key(inputs[name])
        if key not in per_token:
            per_token[key] = token_rows(name, "input", inputs[name], rows).float()
        x = per_token[key]
        width = outputs[name].shape[-1]
        delta = (torch.zeros(*rows, width, device=x.device) if grad is None
                 else token_rows(name, "output gradient", grad, rows).float())
        factors[name] = LayerFactors(delta, x)
    return loss, factors


def token_rows(name: str, what: str, tensor: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
    """A layer's input or output gradient as (B, T, width), one row per token of the (B, T) batch.

    Most models call their linear layers on (B, T, width); OPT's MLP (fc1, fc2) runs on the tokens
    flattened to (B·T, width), which is the same rows in row-major order and is reshaped back. Any
    other layout (a layer run on a subset of the tokens, or on rows that are not tokens) cannot be
    split into per-example gradients and is a ``LayerShapeError``."""
    b, t = rows
    shape = tuple(tensor.shape)
    if len(shape) == 3 and shape[:2] == rows:
        return tensor
    if len(shape) >= 2 and shape[0] in (b, b * t) and math.prod(shape[:-1]) == b * t:
        return tensor.reshape(b, t, shape[-1])
    raise LayerShapeError(name, what, shape, rows)


class LayerShapeError(ApproxError, ValueError):
    """A linear layer whose input does not hold one row per token of the batch, so its gradient
    cannot be split into per-example gradients."""

    def __init__(self, name: str, what: str, shape: tuple[int, ...], rows: tuple[int, ...]):
        self.name, self.shape, self.rows = name, shape, rows
        b, t = rows
        super().__init__(
            f"layer {name!r}: its {what} has shape {shape}, not one row per token of the batch "
            f"(B={b}, T={t}: (B, T, width) or (B·T, width)), so per-example gradients cannot be taken "
            "there; choose other layers with params=LAYER,... or params=head")
