"""The batch types tasks return and models accept (the contract between the two floors).

Tasks and models never import each other: a task declares the batch class it samples, a model
declares the batch classes it accepts, and both name the classes defined here (or a user's own
subclass). :mod:`iclab.registry` checks a task/model pair against these declarations when the
configuration is validated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def prompt_tokens(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Token rows (E, B, n+1, d+1) from x (E, B, n, d), y (E, B, n), x_query (E, B, d).

    Rows ``[x_i, y_i]`` then the query ``[x_q, 0]``: the transpose of the papers' column
    convention Z0 ∈ R^{(d+1)×(n+1)}.
    """
    ctx = torch.cat([x, y.unsqueeze(-1)], dim=-1)
    q = torch.cat([x_query, torch.zeros_like(x_query[..., :1])], dim=-1)
    return torch.cat([ctx, q.unsqueeze(-2)], dim=-2)


class Batch:
    """Base of every batch: a frozen dataclass of tensors (leading ensemble dimension E)."""

    def to(self, dtype: torch.dtype) -> Any:
        """The same batch with every floating tensor field cast to ``dtype``."""
        cast = {
            f.name: getattr(self, f.name).to(dtype)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if torch.is_tensor(getattr(self, f.name))
        }
        return dataclasses.replace(self, **cast)  # type: ignore[type-var]


class PromptBatch(Batch):
    """Prompts of n labelled examples and a query: fields ``x`` (E, B, n, d), ``y`` (E, B, n),
    ``x_query`` (E, B, d) and ``y_query`` (E, B), plus any ground truth a task adds."""

    x: torch.Tensor
    y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    @property
    def n(self) -> int:
        return self.x.shape[-2]

    @property
    def d(self) -> int:
        return self.x.shape[-1]

    def tokens(self) -> torch.Tensor:
        """Token rows (E, B, n+1, d+1); the query's label slot is 0 (:func:`prompt_tokens`)."""
        return prompt_tokens(self.x, self.y, self.x_query)


class SequenceBatch(Batch):
    """Sequences to be predicted one step ahead: field ``x`` (E, m, T, d), the states x_1..x_T."""

    x: torch.Tensor
