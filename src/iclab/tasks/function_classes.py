"""Random functions of the standard ICL function classes, drawn in batches and evaluated in batches.

Each family is a prior over functions ``f: R^d → R``; one function is drawn per prompt. With
``x ~ N(0, I_d)`` (the default input law of :mod:`iclab.tasks.function_class`):

- ``linear``: ``f(x) = wᵀx``, ``w ~ N(0, I_d)``. ``E[f(x)] = 0``, ``E[f(x)²] = E‖w‖² = d``.
- ``sparse_linear``: as ``linear`` but ``w`` has exactly ``k`` non-zero coordinates, a support
  drawn uniformly among the ``C(d, k)`` subsets, values ``N(0, 1)``. ``E[f(x)²] = k``.
- ``linear_classification``: ``f(x) = sign(wᵀx) ∈ {−1, +1}`` (``sign(0) = +1``, an event of
  probability zero), ``w ~ N(0, I_d)``. ``P(f(x) = +1) = 1/2`` by the symmetry ``w → −w``.
- ``noisy_linear``: the ``linear`` function; the task adds label noise ``N(0, σ²)`` (noise is a
  property of the observation, not of ``f``, so it is not drawn here).
- ``quadratic``: ``f(x) = c · Σ_i w_i x_i²``, ``w ~ N(0, I_d)``. Given ``w``, ``E[f | w] = c Σ w_i``
  and ``Var(f | w) = 2c² Σ w_i²`` (``Var x_i² = 2``); over ``w``, ``E[f] = 0`` and
  ``E[f²] = c² Σ_i E[w_i²] E[x_i⁴] = 3 c² d``. ``normalize=True`` takes ``c = 1/√3`` so that
  ``E[f²] = d``, the scale of ``linear``; ``normalize=False`` takes ``c = 1`` (``E[f²] = 3d``).
- ``relu_network``: ``f(x) = Σ_{j=1}^{m} a_j ReLU(u_jᵀx)`` with ``m`` = width hidden units,
  ``u_j ~ N(0, I_d)``, ``a_j ~ N(0, 2/m)``, no biases. The ``a_j`` are independent with mean 0,
  so cross terms vanish: ``E[f² | x] = Σ_j E[a_j²] E[ReLU(u_jᵀx)² | x] = m · (2/m) · ‖x‖²/2 =
  ‖x‖²`` (``u_jᵀx ~ N(0, ‖x‖²)`` given ``x``, and ``E[ReLU(g)²] = Var(g)/2`` for centred
  Gaussian ``g``). Hence ``E[f²] = E‖x‖² = d`` for every width — the scale of ``linear`` — and
  ``E[f] = 0`` by the symmetry ``a → −a``.
- ``decision_tree``: a full binary tree of depth ``D``: ``2^D − 1`` internal nodes in heap order
  (node ``i`` has children ``2i+1``, left, and ``2i+2``, right), each splitting on one coordinate
  ``c ~ Uniform{0, …, d−1}`` (``x_c > 0`` goes right, ``x_c ≤ 0`` left), and ``2^D`` leaves with
  values ``N(0, 1)``; ``f(x)`` is the value of the leaf ``x`` reaches. A coordinate may repeat
  along a path, so some leaves are unreachable: for Gaussian ``x`` a leaf is reached with
  probability ``2^{−(distinct coordinates on its path)}`` when its path's sign conditions agree,
  and 0 when they contradict (e.g. ``x_3 > 0`` then ``x_3 ≤ 0``). Leaf occupancy is uniform over
  the ``2^D`` leaves only for trees whose paths never repeat a coordinate.

Every function carries an output multiplier ``scale`` (``f = scale · f_raw``): the task's
``y_scale`` times the quadratic normalization ``c``.

:func:`draw_functions` draws a batch of functions from a generator as a :class:`FunctionParams`
(tensors with any leading batch shape), :func:`evaluate` computes ``f`` at arbitrary points,
batched over prompts and points; the tree is walked level by level with ``gather``, never one
prompt at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

__all__ = [
    "FAMILIES",
    "Family",
    "FunctionParams",
    "draw_functions",
    "evaluate",
    "leaf_index",
    "quadratic_factor",
]

Family = Literal[
    "linear",
    "sparse_linear",
    "linear_classification",
    "noisy_linear",
    "quadratic",
    "relu_network",
    "decision_tree",
]
FAMILIES: tuple[str, ...] = Family.__args__  # type: ignore[attr-defined]

# families whose function is the vector w (f is wᵀx, sign(wᵀx) or a weighted sum of x_i²)
_WEIGHT_FAMILIES = {"linear", "sparse_linear", "linear_classification", "noisy_linear", "quadratic"}


def quadratic_factor(normalize: bool) -> float:
    """The quadratic family's ``c``: ``1/√3`` (``E[f²] = d``) when normalizing, else 1."""
    return 1.0 / math.sqrt(3.0) if normalize else 1.0


@dataclass(frozen=True)
class FunctionParams:
    """A batch of functions of one family; every tensor has the same leading batch shape ``S``.

    Only the fields of the family are set, the others are ``None``:

    - ``w`` (S, d): the weight vector (linear, sparse, classification, noisy, quadratic);
    - ``hidden`` (S, width, d) rows ``u_j`` and ``output`` (S, width) the ``a_j`` (relu_network);
    - ``split_coords`` (S, 2^D − 1) int64 in heap order and ``leaf_values`` (S, 2^D)
      (decision_tree).

    ``scale`` multiplies the function's output (y_scale · the quadratic ``c``).
    """

    family: str
    scale: float = 1.0
    w: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    output: torch.Tensor | None = None
    split_coords: torch.Tensor | None = None
    leaf_values: torch.Tensor | None = None

    def _tensors(self) -> dict[str, torch.Tensor]:
        names = ("w", "hidden", "output", "split_coords", "leaf_values")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    @property
    def batch_shape(self) -> torch.Size:
        if self.w is not None:
            return self.w.shape[:-1]
        if self.output is not None:
            return self.output.shape[:-1]
        return self.leaf_values.shape[:-1]  # type: ignore[union-attr]

    @property
    def depth(self) -> int:
        """The tree depth ``D`` (decision_tree only)."""
        return int(self.leaf_values.shape[-1]).bit_length() - 1  # type: ignore[union-attr]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> FunctionParams:
        """The same functions with ``fn`` applied to every tensor (indexing, stacking, moving)."""
        return replace(self, **{k: fn(v) for k, v in self._tensors().items()})

    def to(self, dtype: torch.dtype) -> FunctionParams:
        """Floating tensors cast to ``dtype``; ``split_coords`` stays int64."""
        return self.map(lambda t: t.to(dtype) if t.is_floating_point() else t)

    @staticmethod
    def stack(parts: Sequence[FunctionParams], dim: int = 0) -> FunctionParams:
        """Functions of one family and scale stacked along a new batch axis ``dim``."""
        first = parts[0]
        tensors = {k: torch.stack([p._tensors()[k] for p in parts], dim) for k in first._tensors()}
        return replace(first, **tensors)


def draw_functions(
    family: str,
    count: int,
    d: int,
    generator: torch.Generator,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    sparsity: int | None = None,
    width: int | None = None,
    depth: int | None = None,
    scale: float = 1.0,
) -> FunctionParams:
    """``count`` independent functions of ``family`` (batch shape ``(count,)``) from ``generator``.

    ``sparsity`` is needed by sparse_linear, ``width`` by relu_network, ``depth`` by decision_tree.
    """
    kw = dict(generator=generator, device=device)
    if family in _WEIGHT_FAMILIES:
        w = torch.randn(count, d, dtype=dtype, **kw)
        if family == "sparse_linear":
            if sparsity is None or not 1 <= sparsity <= d:
                raise ValueError(f"sparsity: must be in [1, d={d}], got {sparsity}")
            # a uniform random k-subset per function: the first k of a uniform random permutation
            order = torch.rand(count, d, **kw).argsort(dim=-1)
            mask = torch.zeros(count, d, dtype=torch.bool, device=device)
            mask.scatter_(-1, order[:, :sparsity], True)
            w = torch.where(mask, w, torch.zeros((), dtype=dtype, device=device))
        return FunctionParams(family, scale=scale, w=w)
    if family == "relu_network":
        if width is None or width < 1:
            raise ValueError(f"width: must be >= 1, got {width}")
        hidden = torch.randn(count, width, d, dtype=dtype, **kw)
        output = torch.randn(count, width, dtype=dtype, **kw) * math.sqrt(2.0 / width)
        return FunctionParams(family, scale=scale, hidden=hidden, output=output)
    if family == "decision_tree":
        if depth is None or depth < 1:
            raise ValueError(f"depth: must be >= 1, got {depth}")
        coords = torch.randint(d, (count, 2**depth - 1), **kw)
        leaves = torch.randn(count, 2**depth, dtype=dtype, **kw)
        return FunctionParams(family, scale=scale, split_coords=coords, leaf_values=leaves)
    raise ValueError(f"family: unknown family {family!r}; allowed: {', '.join(FAMILIES)}")


def leaf_index(params: FunctionParams, x: torch.Tensor) -> torch.Tensor:
    """The leaf (0 … 2^D − 1, left to right) each point reaches: x (S, m, d) → (S, m) int64.

    One ``gather`` per level: every point holds its current heap node, reads that node's split
    coordinate, then that coordinate of itself, and steps to child ``2i+1`` or ``2i+2``.
    """
    coords = params.split_coords
    assert coords is not None
    m = x.shape[-2]
    node = torch.zeros(x.shape[:-1], dtype=torch.int64, device=x.device)  # (S, m)
    table = coords.unsqueeze(-2).expand(*coords.shape[:-1], m, coords.shape[-1])  # (S, m, nodes)
    for _ in range(params.depth):
        c = table.gather(-1, node.unsqueeze(-1))  # (S, m, 1): the split coordinate
        right = (x.gather(-1, c) > 0).squeeze(-1)
        node = 2 * node + 1 + right.to(torch.int64)
    return node - (2**params.depth - 1)


def evaluate(params: FunctionParams, x: torch.Tensor) -> torch.Tensor:
    """``f(x)`` for a batch of functions (batch shape S) at points x: (S, m, d) → (S, m), or one
    point per function, (S, d) → (S). Noise-free; includes ``params.scale``."""
    single = x.dim() == len(params.batch_shape) + 1
    if single:
        x = x.unsqueeze(-2)
    fam = params.family
    if fam in _WEIGHT_FAMILIES:
        w = params.w.unsqueeze(-1)  # type: ignore[union-attr]
        if fam == "quadratic":
            out = ((x * x) @ w).squeeze(-1)
        else:
            out = (x @ w).squeeze(-1)
            if fam == "linear_classification":
                out = torch.where(out >= 0, 1.0, -1.0).to(x.dtype)
    elif fam == "relu_network":
        pre = x @ params.hidden.transpose(-1, -2)  # type: ignore[union-attr]  # (S, m, width)
        out = (torch.relu(pre) @ params.output.unsqueeze(-1)).squeeze(-1)  # type: ignore[union-attr]
    elif fam == "decision_tree":
        leaf = leaf_index(params, x)
        out = params.leaf_values.gather(-1, leaf)  # type: ignore[union-attr]
    else:
        raise ValueError(f"family: unknown family {fam!r}; allowed: {', '.join(FAMILIES)}")
    out = out * params.scale if params.scale != 1.0 else out
    return out.squeeze(-1) if single else out
