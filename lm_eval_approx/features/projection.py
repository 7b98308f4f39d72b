"""Random projections of per-example gradients (and of the target θ0 − θf) to d dimensions.

All projections are Johnson–Lindenstrauss maps P with E[PᵀP] = I, so inner products are
preserved in expectation: E⟨P g_i, P g_j⟩ = ⟨g_i, g_j⟩. The total dimension d is split over
the layers of the parameter set (d_l ≈ d / L, the remainder to the first layers) and the layer
blocks are concatenated; each layer has its own matrices, seeded by (seed, layer name), so every
process and every run with the same seed projects identically.

- ``kronecker`` (default): per layer (out×in) two Rademacher matrices P_out (d1×out),
  P_in (d2×in), entries ±1/√d1 and ±1/√d2, d1·d2 ≈ d_l. For G = Σ_t δ_t x_tᵀ,
  P_out G P_inᵀ = Σ_t (P_out δ_t)(P_in x_t)ᵀ: cost O(T(out·d1 + in·d2)), G never formed.
  E[⟨P_out G P_inᵀ, P_out H P_inᵀ⟩] = tr(Gᵀ E[P_outᵀP_out] H E[P_inᵀP_in]) = ⟨G, H⟩.
  Target: P_out (W0 − Wf) P_inᵀ, and for a LoRA term L R = −s·B A: (P_out L)(R P_inᵀ).
- ``dense``: vec(G) times a stored Rademacher matrix d_l × (out·in), entries ±1/√d_l (an
  oracle for small models: it materialises G and the matrix).
- ``identity``: vec(G) itself, d = number of parameters (exact oracle).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.config_checks import check_int
from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.features.config import DEFAULT_DIM
from lm_eval_approx.features.gradients import LayerFactors, tensor_key
from lm_eval_approx.models.layers import WeightDelta

DENSE_MAX_ELEMENTS = 1 << 28
IDENTITY_MAX_DIM = 1 << 24
SEED_HEX_DIGITS = 15


def layer_seed(seed: int, name: str, part: str) -> int:
    """A stable 60-bit seed for one random matrix of one layer (independent of process and order)."""
    return int(short_hash(f"{seed}:{name}:{part}", SEED_HEX_DIGITS), 16)


def rademacher(rows: int, cols: int, seed: int, device="cpu") -> torch.Tensor:
    """A rows×cols matrix of ±1/√rows, so that E[PᵀP] = I."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (rows, cols), generator=generator, dtype=torch.int8)
    return (signs.float() * 2 - 1).div_(math.sqrt(rows)).to(device)


def split_dim(dim: int, layers: int) -> list[int]:
    """d split over ``layers`` blocks as evenly as possible (the first blocks take the remainder)."""
    if dim < layers:
        raise ConfigError("dim", dim, f"at least one dimension per layer (≥ {layers} for this parameter set)")
    base, extra = divmod(dim, layers)
    return [base + (i < extra) for i in range(layers)]


class Projector(ABC):
    """Maps per-layer gradient factors and weight deltas to one d-vector per example / target."""

    kind: ClassVar[str]

    def __init__(self, shapes: dict[str, tuple[int, int]], dim: int, seed: int = 0, device="cpu"):
        if not shapes:
            raise ConfigError("params", "(empty)", "at least one layer to project")
        check_int("dim", dim, minimum=1)
        self.shapes, self.seed, self.device = dict(shapes), int(seed), device

    @property
    @abstractmethod
    def dim(self) -> int:
        """The actual output dimension (may round the requested one)."""

    @abstractmethod
    def project_layer(self, name: str, factors: LayerFactors) -> torch.Tensor:
        """(B, d_l) projected per-example gradients of one layer."""

    @abstractmethod
    def project_delta_layer(self, name: str, delta: WeightDelta) -> torch.Tensor:
        """(d_l,) projected weight delta of one layer."""

    def project(self, factors: dict[str, LayerFactors]) -> torch.Tensor:
        """(B, d): the layer blocks concatenated in ``shapes`` order."""
        return torch.cat([self.project_layer(name, factors[name]) for name in self.shapes], dim=1)

    def project_delta(self, deltas: dict[str, WeightDelta]) -> torch.Tensor:
        """(d,): the projected target θ0 − θf over the same layers."""
        return torch.cat([self.project_delta_layer(name, deltas[name]) for name in self.shapes])

    def low_rank(self, factors: dict[str, LayerFactors]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Factors (B, r, d1), (B, r, d2) with project(...)[b] = Σ_r outer(A[b,r], B[b,r]).ravel(), if any."""
        return None

    def describe(self) -> dict:
        return {"projection": self.kind, "dim": self.dim, "seed": self.seed}


class KroneckerProjector(Projector):
    """Per-layer P_out ⊗ P_in projection through the gradient factors (see the module docstring)."""

    kind = "kronecker"

    def __init__(self, shapes, dim=DEFAULT_DIM, seed=0, device="cpu"):
        super().__init__(shapes, dim, seed, device)
        self.blocks: dict[str, tuple[int, int]] = {}
        for (name, _), budget in zip(self.shapes.items(), split_dim(dim, len(self.shapes))):
            d1 = max(1, math.isqrt(budget))
            self.blocks[name] = (d1, budget // d1)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        return sum(d1 * d2 for d1, d2 in self.blocks.values())

    def matrices(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_out, P_in) of one layer, generated once from the seed."""
        if name not in self._cache:
            (out, inp), (d1, d2) = self.shapes[name], self.blocks[name]
            self._cache[name] = (rademacher(d1, out, layer_seed(self.seed, name, "out"), self.device),
                                 rademacher(d2, inp, layer_seed(self.seed, name, "in"), self.device))
        return self._cache[name]

    def _factors(self, name: str, factors: LayerFactors) -> tuple[torch.Tensor, torch.Tensor]:
        p_out, p_in = self.matrices(name)
        return factors.delta @ p_out.t(), factors.x @ p_in.t()

    def project_layer(self, name, factors):
        a, b = self._factors(name, factors)
        return torch.einsum("brd,bre->bde", a, b).reshape(a.shape[0], -1)

    def project(self, factors):
        """As the base class, batched for speed (narrow products are slow on CPU): layers fed the same
        input (q/k/v, gate/up) share one pass over it with their P_in stacked, and the per-layer
        outer products Σ_r a_r b_rᵀ of equal block shapes run as one batched product."""
        groups: dict[tuple, list[str]] = {}
        for name in self.shapes:
            groups.setdefault(tensor_key(factors[name].x), []).append(name)
        b_of: dict[str, torch.Tensor] = {}
        for names in groups.values():
            stacked = torch.cat([self.matrices(n)[1] for n in names])
            both = factors[names[0]].x @ stacked.t()
            b_of.update(zip(names, both.split([self.blocks[n][1] for n in names], dim=-1)))
        by_shape: dict[tuple, list[str]] = {}
        for name in self.shapes:
            by_shape.setdefault((self.blocks[name], tuple(factors[name].delta.shape[:2])), []).append(name)
        out: dict[str, torch.Tensor] = {}
        for names in by_shape.values():
            a = torch.stack([factors[n].delta @ self.matrices(n)[0].t() for n in names])
            b = torch.stack([b_of[n] for n in names])
            outer = a.transpose(-1, -2) @ b
            out.update(zip(names, outer.reshape(len(names), outer.shape[1], -1).unbind(0)))
        return torch.cat([out[name] for name in self.shapes], dim=1)

    def project_delta_layer(self, name, delta):
        p_out, p_in = self.matrices(name)
        total = torch.zeros(p_out.shape[0], p_in.shape[0], device=self.device)
        for left, right in delta.terms:
            left = left.to(self.device).float()
            if right is None:
                total += p_out @ left @ p_in.t()
            else:
                total += (p_out @ left) @ (right.to(self.device).float() @ p_in.t())
        return total.reshape(-1)

    def low_rank(self, factors):
        if len(self.shapes) != 1:
            return None
        name = next(iter(self.shapes))
        return self._factors(name, factors[name])


class DenseProjector(Projector):
    """Materialised gradient times a stored Rademacher matrix per layer (oracle, small models)."""

    kind = "dense"

    def __init__(self, shapes, dim=DEFAULT_DIM, seed=0, device="cpu"):
        super().__init__(shapes, dim, seed, device)
        self.blocks = dict(zip(self.shapes, split_dim(dim, len(self.shapes))))
        size = sum(self.blocks[n] * out * inp for n, (out, inp) in self.shapes.items())
        if size > DENSE_MAX_ELEMENTS:
            raise ConfigError("projection", "dense", f"a parameter set small enough for a {size:,}-entry "
                              f"matrix (limit {DENSE_MAX_ELEMENTS:,}); use projection=kronecker")
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return sum(self.blocks.values())

    def matrix(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            out, inp = self.shapes[name]
            self._cache[name] = rademacher(self.blocks[name], out * inp, layer_seed(self.seed, name, "dense"),
                                           self.device)
        return self._cache[name]

    def project_layer(self, name, factors):
        grads = factors.gradient()
        return grads.reshape(grads.shape[0], -1) @ self.matrix(name).t()

    def project_delta_layer(self, name, delta):
        return self.matrix(name) @ delta.materialise().expand(self.shapes[name]).to(self.device).float().reshape(-1)


class IdentityProjector(Projector):
    """No projection: the flattened gradient (exact oracle, d = number of parameters)."""

    kind = "identity"

    def __init__(self, shapes, dim=DEFAULT_DIM, seed=0, device="cpu"):
        super().__init__(shapes, dim, seed, device)
        if self.dim > IDENTITY_MAX_DIM:
            raise ConfigError("projection", "identity", f"at most {IDENTITY_MAX_DIM:,} parameters "
                              f"(this parameter set has {self.dim:,}); use projection=kronecker")

    @property
    def dim(self) -> int:
        return sum(out * inp for out, inp in self.shapes.values())

    def project_layer(self, name, factors):
        grads = factors.gradient()
        return grads.reshape(grads.shape[0], -1)

    def project_delta_layer(self, name, delta):
        return delta.materialise().expand(self.shapes[name]).to(self.device).float().reshape(-1)


PROJECTORS: dict[str, type[Projector]] = {
    cls.kind: cls for cls in (KroneckerProjector, DenseProjector, IdentityProjector)
}


def make_projector(kind: str, shapes: dict[str, tuple[int, int]], dim: int = DEFAULT_DIM, seed: int = 0,
                   device="cpu") -> Projector:
    """A projector by kind name (``kronecker``, ``dense``, ``identity``)."""
    if kind not in PROJECTORS:
        raise UnknownNameError("projection", kind, PROJECTORS)
    return PROJECTORS[kind](shapes, dim, seed, device)
