"""Prompts from the standard function classes of in-context learning (Garg et al. 2022).

A prompt holds n context pairs ``(x_i, f(x_i))`` and a query ``x_q`` for one random function ``f``
of a *family* (:mod:`iclab.tasks.function_classes` states each prior and its moments): linear,
sparse_linear, linear_classification, noisy_linear, quadratic, relu_network, decision_tree.
Labels are ``y = y_scale · (f(x) + ε)`` with ``ε ~ N(0, noise_std²)`` for noisy_linear and
``ε = 0`` otherwise; the query's label ``y_query`` is computed the same way with its own noise.

**Inputs.** ``x = x_scale · x₀`` with ``x₀ ~ N(0, I_d)`` (``gaussian``), ``N(0, Σ)`` with a
per-seed rotated spectrum ∝ 1/i (``skewed``) or uniform on a per-seed random r-dimensional
subspace (``low_rank``); :mod:`iclab.tasks.input_shifts` gives the constructions. With
``active_dims = a < d`` the coordinates ``a … d−1`` of every input are set to 0 (after the
input law, before the shifts), the effective dimension of a curriculum; the functions are still
drawn in dimension d (a tree split on an inactive coordinate always goes left, since 0 ≤ 0).

**Evaluation shifts** (defaults: none). ``query='orthogonal'``: the query is orthogonal to every
context input (same norm law as a standard query), which needs n below the dimension of the
inputs' support ``min(d, active_dims, rank)``; ``query='context_point'``: the query is one of the
context inputs, chosen uniformly per prompt. ``quadrants='random'``: per prompt one random sign
pattern is imposed on every context input and on the query (absolute values kept);
``'opposite'``: the query gets the negated pattern. Quadrants need ``query='standard'``.

**Task diversity.** ``pool_size = P`` draws, once per seed, a fixed pool of P functions (from
the seed's own stream, on the CPU in float64, so the pool is the same for every purpose, index,
device and dtype); each prompt then uses a pool member chosen uniformly (``pool_index``).

**Curriculum.** :meth:`FunctionClassTask.sample` accepts ``n`` and ``active_dims`` overrides,
so a schedule can grow the prompt length and the effective dimension without rebuilding the
task (the functions, pool and input laws stay those of the config).

**One kind, a ``family`` field.** The seven families share every other field — inputs, shifts,
pool, curriculum, the batch layout — and differ only in how ``f`` is drawn, so they are one
registered kind (``function_class``) rather than seven near-identical configs; the fields that
only one family reads (``sparsity``, ``noise_std``, ``width``, ``depth``, ``normalize``) are
refused for the others, so no setting is silently ignored.

Every tensor carries a leading ensemble dimension ``E`` (one slice per seed) then the batch
dimension ``B``; member ``e`` draws everything from the streams of ``seeds[e]`` alone, exactly as
a single-seed run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from iclab.batches import PromptBatch
from iclab.registry import register_task
from iclab.seeding import make_generator
from iclab.tasks.ensemble_task import EnsembleTask
from iclab.tasks.function_classes import (
    Family,
    FunctionParams,
    draw_functions,
    evaluate,
    quadratic_factor,
)
from iclab.tasks.input_shifts import (
    apply_quadrants,
    haar_orthogonal,
    orthogonal_query,
    skewed_spectrum,
)
from iclab.validation import STRICT_CONFIG, FiniteFloat

__all__ = ["FunctionClassBatch", "FunctionClassConfig", "FunctionClassTask"]

PositiveInt = Annotated[int, Field(ge=1)]

# the fields only one family reads, and their value when that family leaves them out (None:
# the field is required for that family)
FAMILY_FIELDS: dict[str, tuple[str, Any]] = {
    "sparsity": ("sparse_linear", None),
    "noise_std": ("noisy_linear", None),
    "width": ("relu_network", 100),
    "depth": ("decision_tree", 4),
    "normalize": ("quadratic", True),
}


class FunctionClassConfig(BaseModel):
    """Function-class prompts (see the module docstring); family-specific fields are ``null``
    for the other families, and filled with their default for their own."""

    model_config = STRICT_CONFIG

    kind: Literal["function_class"] = "function_class"
    family: Family = Field("linear", description="the function class f is drawn from")
    d: int = Field(20, ge=1, description="input dimension")
    n: int = Field(40, ge=1, description="context examples per prompt (plus one query)")
    sparsity: PositiveInt | None = Field(
        None, validate_default=True, description="sparse_linear: non-zero weights k (<= d)"
    )
    noise_std: Annotated[FiniteFloat, Field(ge=0.0)] | None = Field(
        None, validate_default=True, description="noisy_linear: label noise σ (>= 0)"
    )
    width: PositiveInt | None = Field(
        None, validate_default=True, description="relu_network: hidden units (default 100)"
    )
    depth: Annotated[int, Field(ge=1, le=20)] | None = Field(
        None, validate_default=True, description="decision_tree: depth, 1 … 20 (default 4)"
    )
    normalize: bool | None = Field(
        None,
        validate_default=True,
        description="quadratic: scale by 1/√3 so E[y²] = d as for linear (default true)",
    )
    x_distribution: Literal["gaussian", "skewed", "low_rank"] = Field(
        "gaussian",
        description="inputs: N(0, I), N(0, Σ) with eigenvalues ∝ 1/i and trace d (random "
        "rotation per seed), or N(0, I_r) on a random r-dimensional subspace per seed",
    )
    rank: PositiveInt | None = Field(
        None, validate_default=True, description="low_rank: subspace dimension r (<= d)"
    )
    x_scale: FiniteFloat = Field(1.0, gt=0.0, description="inputs multiplied by this factor (> 0)")
    y_scale: FiniteFloat = Field(1.0, gt=0.0, description="labels multiplied by this factor (> 0)")
    query: Literal["standard", "orthogonal", "context_point"] = Field(
        "standard",
        description="the query: a fresh input, one orthogonal to the context inputs, or one of "
        "the context inputs",
    )
    quadrants: Literal["none", "random", "opposite"] = Field(
        "none",
        description="per prompt one random sign pattern for the context inputs; the query gets "
        "the same ('random') or the negated ('opposite') pattern",
    )
    pool_size: PositiveInt | None = Field(
        None,
        description="a fixed pool of this many functions per seed (null: a fresh f per prompt)",
    )
    active_dims: PositiveInt | None = Field(
        None, description="only the first active_dims coordinates are non-zero (null: all d)"
    )

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            family = data.get("family", "linear")
            missing = {
                name: default
                for name, (owner, default) in FAMILY_FIELDS.items()
                if owner == family and default is not None and data.get(name) is None
            }
            if missing:
                data = {**data, **missing}
        return data

    @field_validator(*FAMILY_FIELDS, mode="after")
    @classmethod
    def _family_field(cls, value: Any, info: ValidationInfo) -> Any:
        family = info.data.get("family")
        if family is None:  # the family itself is invalid; its own error says so
            return value
        owner = FAMILY_FIELDS[str(info.field_name)][0]
        if value is not None and family != owner:
            raise ValueError(f"only used by family {owner!r} (family is {family!r}); remove it")
        if value is None and family == owner:
            raise ValueError(f"required by family {owner!r}")
        d = info.data.get("d")
        if info.field_name == "sparsity" and value is not None and d is not None and value > d:
            raise ValueError(f"must be <= d = {d}")
        return value

    @field_validator("rank", mode="after")
    @classmethod
    def _rank(cls, value: int | None, info: ValidationInfo) -> int | None:
        dist = info.data.get("x_distribution")
        if dist is None:
            return value
        if value is not None and dist != "low_rank":
            raise ValueError(
                f"only used by x_distribution 'low_rank' (x_distribution is {dist!r}); remove it"
            )
        if value is None and dist == "low_rank":
            raise ValueError("required by x_distribution 'low_rank'")
        d = info.data.get("d")
        if value is not None and d is not None and value > d:
            raise ValueError(f"must be <= d = {d}")
        return value

    @field_validator("active_dims", mode="after")
    @classmethod
    def _active_dims(cls, value: int | None, info: ValidationInfo) -> int | None:
        d = info.data.get("d")
        if value is not None and d is not None and value > d:
            raise ValueError(f"must be <= d = {d}")
        return value

    @model_validator(mode="after")
    def _check_shifts(self) -> FunctionClassConfig:
        if self.quadrants != "none" and self.query != "standard":
            raise ValueError(
                f"quadrants: {self.quadrants!r} sets the query's signs, so it needs "
                f"query='standard' (got query={self.query!r})"
            )
        if self.query == "orthogonal":
            check_orthogonal_room(self.n, self.support_dims(self.effective_dims))
        return self

    @property
    def effective_dims(self) -> int:
        """``active_dims``, or d when it is null."""
        return self.d if self.active_dims is None else self.active_dims

    def support_dims(self, active_dims: int) -> int:
        """The dimension of the inputs' support with ``active_dims`` active coordinates."""
        return min(active_dims, self.rank if self.x_distribution == "low_rank" else self.d)


def check_orthogonal_room(n: int, support: int) -> None:
    if n >= support:
        raise ValueError(
            f"query: 'orthogonal' needs n < {support}, the dimension of the inputs' support "
            f"(min of d, active_dims, rank), so that the context inputs leave room; got n={n}"
        )


@dataclass(frozen=True)
class FunctionClassBatch(PromptBatch):
    """A batch of function-class prompts with the functions that labelled them.

    Shapes: E ensemble, B prompts, n context, d. ``params`` has batch shape (E, B), so
    ``self.evaluate(x)`` recomputes the noise-free labels at any x (E, B, m, d) or (E, B, d).
    """

    x: torch.Tensor  # (E, B, n, d)
    y: torch.Tensor  # (E, B, n)
    x_query: torch.Tensor  # (E, B, d)
    y_query: torch.Tensor  # (E, B)
    params: FunctionParams  # batch shape (E, B)
    pool_index: torch.Tensor | None  # (E, B) int64: the pool member of each prompt, or None
    active_dims: int  # coordinates active_dims … d−1 of every input are 0
    noise_std: float  # σ of ε in y = y_scale · (f(x) + ε)

    @property
    def w(self) -> torch.Tensor | None:
        """The weight vectors (E, B, d) of the weight families; None for networks and trees."""
        return self.params.w

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """``y_scale · f(x)`` of each prompt's function (:func:`~iclab.tasks.function_classes.evaluate`)."""
        return evaluate(self.params, x)

    def to(self, dtype: torch.dtype) -> FunctionClassBatch:
        """The same batch with the floating tensors cast (``split_coords``, ``pool_index`` stay
        int64)."""
        return dataclasses.replace(
            self,
            x=self.x.to(dtype),
            y=self.y.to(dtype),
            x_query=self.x_query.to(dtype),
            y_query=self.y_query.to(dtype),
            params=self.params.to(dtype),
        )


@register_task("function_class", config=FunctionClassConfig, batch=FunctionClassBatch)
class FunctionClassTask(EnsembleTask):
    """Samples :class:`FunctionClassBatch` es for an ensemble of seeds on any device.

    ``covariance`` (E, d, d, float64) is the covariance of ``x₀``, the inputs before
    ``active_dims``, the shifts and ``x_scale``: I, the skewed Σ, or the projection V Vᵀ.
    ``pools`` holds each seed's function pool (batch shape (pool_size,)) when pooling.
    """

    curriculum_keys: ClassVar[tuple[str, ...]] = ("n", "active_dims")  # sample() overrides

    def __init__(
        self,
        config: FunctionClassConfig,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(config, seeds, device, dtype)
        d = config.d
        covs, self._x_maps = [], []  # x₀ = z @ map, z standard normal; None for the identity
        for s in self.seeds:
            if config.x_distribution == "gaussian":
                covs.append(torch.eye(d, dtype=torch.float64))
                self._x_maps.append(None)
            elif config.x_distribution == "skewed":
                u = haar_orthogonal(d, make_generator("cpu", s, "function_class", "rotation"))
                covs.append((u * skewed_spectrum(d)) @ u.T)
                root = (u * skewed_spectrum(d).sqrt()) @ u.T  # Σ^{1/2}, symmetric
                self._x_maps.append(root.to(self.device, dtype))
            else:
                u = haar_orthogonal(d, make_generator("cpu", s, "function_class", "subspace"))
                basis = u[:, : config.rank]  # (d, r) orthonormal
                covs.append(basis @ basis.T)
                self._x_maps.append(basis.T.contiguous().to(self.device, dtype))
        self.covariance = torch.stack(covs)
        self._scale = config.y_scale * (
            quadratic_factor(bool(config.normalize)) if config.family == "quadratic" else 1.0
        )
        self.pools: list[FunctionParams] | None = None
        if config.pool_size is not None:
            self.pools = [
                self._draw(
                    config.pool_size,
                    make_generator("cpu", s, "function_class", "pool"),
                    "cpu",
                    torch.float64,
                ).map(
                    lambda t: (
                        t.to(self.device, dtype) if t.is_floating_point() else t.to(self.device)
                    )
                )
                for s in self.seeds
            ]

    def _draw(
        self, count: int, gen: torch.Generator, device: Any, dtype: torch.dtype
    ) -> FunctionParams:
        c = self.config
        return draw_functions(
            c.family,
            count,
            c.d,
            gen,
            device=device,
            dtype=dtype,
            sparsity=c.sparsity,
            width=c.width,
            depth=c.depth,
            scale=self._scale,
        )

    def sample(
        self,
        batch_size: int,
        purpose: str,
        index: int = 0,
        *,
        n: int | None = None,
        active_dims: int | None = None,
    ) -> FunctionClassBatch:
        """Draw ``batch_size`` prompts per member from the stream ``(seed, purpose, index)``.

        ``n`` and ``active_dims`` override the config's for this batch (a curriculum's current
        prompt length and effective dimension).
        """
        c = self.config
        n = c.n if n is None else n
        a = c.effective_dims if active_dims is None else active_dims
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if n < 1:
            raise ValueError(f"n: must be >= 1, got {n}")
        if not 1 <= a <= c.d:
            raise ValueError(f"active_dims: must be in [1, d={c.d}], got {a}")
        if c.query == "orthogonal":
            check_orthogonal_room(n, c.support_dims(a))
        d, B, dev = c.d, batch_size, self.device
        fns, xs, noise, signs, picks, pool_index = [], [], [], [], [], []
        for e, s in enumerate(self.seeds):
            g = make_generator(dev, s, purpose, index)
            kw: dict[str, Any] = dict(generator=g, device=dev)
            if self.pools is None:
                fns.append(self._draw(B, g, dev, self.dtype))
            else:
                i = torch.randint(c.pool_size, (B,), **kw)  # type: ignore[arg-type]
                pool_index.append(i)
                fns.append(self.pools[e].map(lambda t, i=i: t[i]))
            x_map = self._x_maps[e]
            z = torch.randn(
                B, n + 1, d if x_map is None else x_map.shape[0], dtype=self.dtype, **kw
            )
            xs.append(z if x_map is None else z @ x_map)
            if c.family == "noisy_linear":
                noise.append(torch.randn(B, n + 1, dtype=self.dtype, **kw))
            if c.quadrants != "none":
                signs.append(torch.randint(2, (B, d), **kw).to(self.dtype) * 2 - 1)
            if c.query == "context_point":
                picks.append(torch.randint(n, (B,), **kw))
        params = FunctionParams.stack(fns)
        x_all = torch.stack(xs)  # (E, B, n+1, d)
        if a < d:
            x_all[..., a:] = 0
        x, x_query = x_all[:, :, :n], x_all[:, :, n]
        if c.quadrants != "none":
            x, x_query = apply_quadrants(
                x, x_query, torch.stack(signs), opposite=c.quadrants == "opposite"
            )
        elif c.query == "orthogonal":
            x_query = orthogonal_query(x, x_query)
        elif c.query == "context_point":
            j = torch.stack(picks)[..., None, None].expand(-1, -1, 1, d)
            x_query = x.gather(2, j).squeeze(2)
        if c.x_scale != 1.0:
            x, x_query = x * c.x_scale, x_query * c.x_scale
        y, y_query = evaluate(params, x), evaluate(params, x_query)
        sigma = c.noise_std or 0.0
        if noise:
            eps = torch.stack(noise) * (c.y_scale * sigma)
            y, y_query = y + eps[:, :, :n], y_query + eps[:, :, n]
        return FunctionClassBatch(
            x=x,
            y=y,
            x_query=x_query,
            y_query=y_query,
            params=params,
            pool_index=torch.stack(pool_index) if pool_index else None,
            active_dims=a,
            noise_std=sigma,
        )
