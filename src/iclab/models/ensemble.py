"""The model contract: every iclab model is an :class:`EnsembleModel`.

An ensemble model holds ``E`` independent models, one per seed, as parameters with a leading
ensemble dimension, and is built as ``Model(d, config, seeds, device=, dtype=)``. The trainer knows
nothing else about a model than this contract:

- ``prepare(batch) -> state``: the parameter-free part of the forward (e.g. Gram matrices),
  computed once per batch and reused by every step on it (default: the batch itself);
- ``predict_prepared(state) -> (E, B)``: the predictions;
- ``loss_prepared(state, batch) -> (E,)``: the objective per member (default: the mean squared
  error of the prediction against ``batch.y_query``), so the forward returns its loss;
- ``eval_metrics(state, batch) -> {name: per-member list}``: diagnostics logged with every
  evaluation (default: none).

and one vocabulary to inspect a trained model:

- ``residual_stream(batch) -> [Z_0, …, Z_L]``: every layer's token representations;
- ``effective_weights() -> {name: tensor}``: the matrices the theory talks about, each with the
  leading ensemble dimension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from iclab.batches import prompt_tokens
from iclab.seeding import make_generator


def checked_seeds(d: int, seeds: Sequence[int]) -> list[int]:
    """Validate an ensemble model's input dimension and seeds; the seeds as a list."""
    if d < 1:
        raise ValueError(f"d: must be >= 1, got {d}")
    if len(seeds) < 1:
        raise ValueError("seeds: at least one seed is required")
    return list(seeds)


@torch.no_grad()
def init_ensemble_(module: nn.Module, seeds: Sequence[int], std: float) -> None:
    """Fill member ``e`` of every parameter with N(0, std²) draws from the stream
    ``(seeds[e], "init")``, parameters in name order, so member e of an ensemble equals a
    single model built with seed ``seeds[e]``."""
    params = sorted(module.named_parameters())
    for e, seed in enumerate(seeds):
        gen = make_generator(params[0][1].device, seed, "init")
        for _, p in params:
            p[e].copy_(
                torch.randn(p.shape[1:], generator=gen, device=p.device, dtype=p.dtype) * std
            )


def mse_per_member(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per ensemble member, (E,)."""
    return (pred - target).pow(2).mean(dim=-1)


def model_dimensions(d: int, config: Any) -> tuple[int, int, int, int]:
    """(layers, heads, width, MLP width) of a model config, read from its usual field names with
    the defaults 1 layer, 1 head, width d + 1 and no MLP (for estimates, not for building)."""

    def whole(value: Any, default: int) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    heads = getattr(config, "heads", 1)
    heads = len(heads) if isinstance(heads, (list, tuple)) else whole(heads, 1)
    width = whole(getattr(config, "width", None), d + 1)
    mlp = whole(getattr(config, "mlp_ratio", 0), 0) * width
    return whole(getattr(config, "layers", 1), 1), heads, width, mlp


class EnsembleModel(nn.Module):
    """Base class of the ensemble models; see the module docstring for the contract."""

    #: may train under bfloat16 autocast (``precision: bf16``): only models whose numerics
    #: tolerate an 8-bit mantissa in their matmuls (the softmax transformer), never the
    #: closed-form comparisons of the linear models
    bf16_autocast: ClassVar[bool] = False
    #: model config fields a run started from another run's weights (``train.init_from``) may
    #: enlarge, each with the parameter axis it sizes (see :meth:`load_initial_state`); the
    #: model's other settings must equal the source's
    grows_along: ClassVar[dict[str, int]] = {}

    def __init__(
        self,
        d: int,
        config: Any,
        seeds: Sequence[int] = (0,),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.d, self.config, self.seeds = d, config, checked_seeds(d, seeds)
        self._device = torch.device(device)

    @property
    def ensemble_size(self) -> int:
        return len(self.seeds)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else self._device

    # ------------------------------------------------------------------ trainer hooks
    def prepare(self, batch: Any) -> Any:
        """The parameter-free state of a batch (default: the batch itself)."""
        return batch

    def predict_prepared(self, state: Any) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement predict_prepared()")

    def plan(self, state: Any, steps: int) -> None:
        """Told by the trainer that it will take ``steps`` gradient steps on ``state`` (counted
        from the state's first step, so a resumed run is told the same number): a model may
        then precompute statistics of the data that pay over that many steps. Default: nothing."""

    def loss_prepared(self, state: Any, batch: Any) -> torch.Tensor:
        """Objective per member (E,): mean squared error against ``batch.y_query``."""
        return mse_per_member(self.predict_prepared(state), batch.y_query)

    def eval_metrics(self, state: Any, batch: Any) -> dict[str, list[float]]:
        """Per-member diagnostics logged with every evaluation (default: none)."""
        return {}

    def implementation(self) -> dict[str, str]:
        """Which of several exact implementations of the objective this model runs here (they
        agree to rounding, not bit for bit), recorded in ``run.json`` (default: none)."""
        return {}

    @classmethod
    def check_task(cls, config: Any, task: Any) -> None:
        """Raise ValueError (naming the field) if this model cannot read the task's prompts;
        called when a run configuration is validated. Default: any task of an accepted batch."""

    @classmethod
    def activation_bytes(cls, d: int, config: Any, tokens: int, itemsize: int) -> int:
        """An upper bound of the memory one prompt of one member keeps for the backward pass
        (used to refuse runs that cannot fit; see :mod:`iclab.training.memory`). The default
        assumes per layer the token representations and a tokens × tokens score matrix per head."""
        layers, heads, width, mlp = model_dimensions(d, config)
        return layers * tokens * (4 * width + mlp + 2 * heads * tokens) * itemsize

    @classmethod
    def state_bytes(cls, d: int, config: Any, itemsize: int) -> int:
        """Memory one member keeps whatever the batch size (statistics of a data set, working
        buffers of a chunked pass); default none."""
        return 0

    def zero_when_grown(self) -> set[str]:
        """Parameters whose entries beyond a smaller source start at zero when the model grows
        (:meth:`load_initial_state`); the others keep this model's own random initialization.
        A model that declares :attr:`grows_along` chooses them so that the new entries leave
        its function unchanged *and* still receive a gradient (zeroing both factors of a
        product would leave the new layers dead). Default: every parameter."""
        return {name for name, _ in self.named_parameters()}

    @torch.no_grad()
    def load_initial_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Start from another run's saved state ``state`` (``train.init_from``): its parameters
        are loaded, its buffers (constants and counters of its own configuration) are not. A
        parameter of the same shape is copied; one that is smaller along an axis of
        :attr:`grows_along` fills the leading entries, and the rest start at zero for the
        parameters of :meth:`zero_when_grown`, at this model's own initialization otherwise."""
        own = dict(self.named_parameters())
        buffers = {name for name, _ in self.named_buffers()}
        missing = sorted(set(own) - set(state))
        foreign = sorted(set(state) - set(own) - buffers)
        if missing or foreign:
            first = (missing or foreign)[0]
            raise ValueError(f"the parameters differ from this model's (first: {first!r})")
        axes = set(self.grows_along.values())
        zero = self.zero_when_grown()
        for name, p in own.items():
            src = state[name].to(device=p.device, dtype=p.dtype)
            grown = [a for a in range(p.dim()) if src.shape[a] != p.shape[a]]
            if src.dim() != p.dim() or any(
                a not in axes or src.shape[a] > p.shape[a] for a in grown
            ):
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(src.shape)}, which cannot start this "
                    f"model's {tuple(p.shape)}"
                )
            if grown and name in zero:
                p.zero_()
            p[tuple(slice(0, k) for k in src.shape)] = src

    # ------------------------------------------------------------------ inspection
    def residual_stream(self, batch: Any) -> list[torch.Tensor]:
        """Token representations after the embedding and after every layer."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its residual stream")

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """The matrices the theory talks about (default: the parameters, detached)."""
        return {k: v.detach() for k, v in self.named_parameters()}


class TokenRowModel(EnsembleModel):
    """A model reading a prompt as token rows ``[x_i, y_i]`` plus ``[x_q, 0]``.

    Provides the trainer hooks and ``forward`` on top of the subclass's
    ``predict_tokens(tokens) -> (E, B)``.
    """

    tokens = staticmethod(prompt_tokens)

    def predict_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement predict_tokens()")

    def prepare(self, batch: Any) -> torch.Tensor:
        """The state of a prompt batch (with .x, .y, .x_query) is its token matrix."""
        return prompt_tokens(batch.x, batch.y, batch.x_query)

    def predict_prepared(self, state: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B) from :meth:`prepare`'s tokens."""
        return self.predict_tokens(state)

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B) for prompts x (E, B, n, d), y (E, B, n), x_query (E, B, d)."""
        return self.predict_tokens(prompt_tokens(x, y, x_query))
