"""Linear self-attention (LSA): residual attention without softmax on ICL prompts.

Convention: iclab stores one token per *row*. With the papers' column layout
``Z ← Z + (1/n) P Z M (Zᵀ Q Z)``, the row layout reads ``Z ← Z + (1/n) Z Qᵀ (Z_cᵀ Z_c) Pᵀ``,
where ``Z_c`` are the n context rows (the query is never a key or value). Writing
``C = Z_cᵀ Z_c`` (a (d+1)×(d+1) Gram matrix per prompt) and ``K = Qᵀ C Pᵀ / n``, *every* token row
moves by the same linear map: ``z ← z (I + K)``. Hence the context Gram matrix evolves in closed
form, ``C ← (I + K)ᵀ C (I + K)``, and an L-layer forward costs O(n·d²) once (to form C) plus
O(L·d³) per prompt — the prompt itself is never touched again. :meth:`forward_tokens` materializes
every token (associative O(n·d²) per layer) for inspection; tests check all forms agree.

Readout: ``readout="negative"`` (Ahn et al.) predicts ``ŷ = −Z_L[query, label]``;
``"positive"`` (Ding et al.) predicts ``ŷ = +Z_L[query, label]``. Write ``s = −1`` / ``+1``.

Effective matrices (what analysis looks at), per layer ℓ and head h:
``A_ℓ = s · (P[d,d] · Q[:d,:d] + P[d,:d] ⊗ Q[d,:d])ᵀ`` is the preconditioner of the equivalent GD
step: the part of the layer's query-label update that is linear in the context labels, so that
one layer in the sparse form predicts ``ŷ = x_qᵀ A (1/n) Xᵀ y`` (the outer-product term is zero in
the pgd forms, and a full layer can realize part of A through it). ``B_ℓ = P[:d,:d] / P[d,d]``
transforms covariates, ``x ← (I + s · B S Aᵀ) x`` in the pgd forms. Ahn et al.'s ``Q = −[[A, 0], [0, 0]]`` has their ``A`` equal to our
``Aᵀ`` (identical for the symmetric matrices of their theorems).

Parametrizations:
- ``full``: ``P``, ``Q`` unconstrained.
- ``pgd``: ``P = [[B, 0], [0, 1]]``, ``Q = [[s·Aᵀ, 0], [0, 0]]`` with trainable ``A``, ``B``.
- ``sparse_pgd``: as ``pgd`` with ``B = 0``: L layers are exactly L preconditioned GD steps.
- ``label_row`` (Ding et al.): only the last row ``b`` of ``P`` (``value_row``, d+1 entries) and
  the first d columns ``A`` of ``Q`` (``query_columns``, (d+1)×d) are trainable, the rest is 0.
  Only label slots move and the query's zero label never enters a score, so one layer predicts
  ``ŷ = s · bᵀ G A x_q`` with ``G = (1/n) Σ_i z_i z_iᵀ`` — the sparse one-layer form whose
  reparametrization :mod:`iclab.theory.markov_chain` studies. One ``full`` layer has the same
  function class (its other entries of P and Q never reach the query's label slot). For L > 1
  it is iclab's reading of the paper's multi-layer subspace (we do not have the
  paper's Eq. 11 in full): every layer moves the label slots only, ``y_m ← y_m + b_ℓᵀ G_ℓ A_ℓ x_m`` for every
  token m with the current context Gram matrix ``G_ℓ``, and the covariates stay fixed.

All parameters carry leading dims ``(E, L, H, …)``: ensemble member, layer, head. Heads add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from iclab.batches import PromptBatch, prompt_tokens
from iclab.models.ensemble import EnsembleModel, init_ensemble_
from iclab.registry import register_model
from iclab.validation import STRICT_CONFIG

Parametrization = Literal["full", "pgd", "sparse_pgd", "label_row"]
Readout = Literal["negative", "positive"]


class LSAConfig(BaseModel):
    """Linear self-attention model."""

    model_config = STRICT_CONFIG

    kind: Literal["lsa"] = "lsa"
    layers: int = Field(3, ge=1, description="number of attention layers L")
    heads: int = Field(1, ge=1, description="heads per layer (their updates add)")
    parametrization: Parametrization = Field(
        "pgd", description="'full', 'pgd', 'sparse_pgd' or 'label_row' (Ding et al.'s b, A)"
    )
    readout: Readout = Field("negative", description="'negative' (Ahn) or 'positive' (Ding)")
    init_std: float = Field(1e-4, ge=0.0, description="std of the N(0, init_std²) initialization")


@dataclass
class GramState:
    """Per-prompt state of the Gram propagation, batch axis last (structure of arrays).

    ``gram``: (E, D, D, B) context Gram matrix Σ_i z_i z_iᵀ; ``query``: (E, D, B) query token.
    """

    gram: torch.Tensor
    query: torch.Tensor
    n: int


def _tiny_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(…, i, k, B) @ (…, k, j, B) -> (…, i, j, B), the batch axis B last and broadcastable.

    Eager mode uses einsum (batched GEMM); under ``torch.compile`` a broadcast-and-sum form lets
    Inductor fuse the whole network into one vectorized loop over the batch axis.
    """
    if torch.compiler.is_compiling():
        return (a.unsqueeze(-2) * b.unsqueeze(-4)).sum(-3)
    return torch.einsum("...ikb,...kjb->...ijb", a, b)


@register_model("lsa", config=LSAConfig, accepts=(PromptBatch,))
class LinearSelfAttention(EnsembleModel):
    """An ensemble of ``E`` L-layer LSA models; see the module docstring for conventions."""

    # a deeper model starts from a shallower run's layers; its extra layers are identity maps
    # (K = 0) that still receive a gradient (see zero_when_grown)
    grows_along: ClassVar[dict[str, int]] = {"layers": 1}

    def __init__(
        self,
        d: int,
        config: LSAConfig,
        seeds: Sequence[int] = (0,),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(d, config, seeds, device, dtype)
        self.sign = -1.0 if config.readout == "negative" else 1.0
        E, L, H, D = len(seeds), config.layers, config.heads, d + 1
        kw = dict(device=device, dtype=dtype)
        if config.parametrization == "full":
            self.P = nn.Parameter(torch.zeros(E, L, H, D, D, **kw))
            self.Q = nn.Parameter(torch.zeros(E, L, H, D, D, **kw))
        elif config.parametrization == "label_row":
            self.value_row = nn.Parameter(torch.zeros(E, L, H, D, **kw))
            self.query_columns = nn.Parameter(torch.zeros(E, L, H, D, d, **kw))
        else:
            self.A = nn.Parameter(torch.zeros(E, L, H, d, d, **kw))
            if config.parametrization == "pgd":
                self.B = nn.Parameter(torch.zeros(E, L, H, d, d, **kw))
        self.reset_parameters()

    # ----------------------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """Member e's parameters are N(0, init_std²) draws from the stream (seeds[e], 'init')."""
        init_ensemble_(self, self.seeds, self.config.init_std)

    def zero_when_grown(self) -> set[str]:
        """The factor of each new layer that makes it the identity (K = Qᵀ C Pᵀ / n = 0): ``A``
        in the pgd forms (``P`` keeps its fixed 1, so ``A`` still gets a gradient; ``B`` is
        zeroed too and moves once ``A`` has), ``Q`` in the full form and the query columns in
        ``label_row``, whose other factor keeps its random initialization: zeroing both
        factors of a product would leave the layer without a gradient."""
        return {
            "full": {"Q"},
            "label_row": {"query_columns"},
            "pgd": {"A", "B"},
            "sparse_pgd": {"A"},
        }[self.config.parametrization]

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The value and key-query matrices ``(P, Q)``, each (E, L, H, d+1, d+1)."""
        if self.config.parametrization == "full":
            return self.P, self.Q
        d = self.d
        if self.config.parametrization == "label_row":
            b, cols = self.value_row, self.query_columns
            P = torch.cat([b.new_zeros(*b.shape[:-1], d, d + 1), b.unsqueeze(-2)], dim=-2)
            Q = torch.cat([cols, torch.zeros_like(cols[..., :1])], dim=-1)
            return P, Q
        A = self.A
        B = self.B if self.config.parametrization == "pgd" else torch.zeros_like(A)
        P = torch.zeros(*A.shape[:-2], d + 1, d + 1, device=A.device, dtype=A.dtype)
        P[..., :d, :d] = B
        P[..., d, d] = 1.0
        Q = torch.zeros_like(P)
        Q[..., :d, :d] = self.sign * A.transpose(-1, -2)
        return P, Q

    def preconditioners(self) -> torch.Tensor:
        """Effective ``A_ℓ`` per member, layer, head: (E, L, H, d, d)."""
        if self.config.parametrization in ("pgd", "sparse_pgd"):
            return self.A
        d = self.d
        P, Q = self.matrices()
        # the part of the query-label update that is linear in the context labels:
        # y_i x_iᵀ (P[d,d] Q[:d,:d] + P[d,:d] ⊗ Q[d,:d]) x_q
        m = P[..., d, d, None, None] * Q[..., :d, :d] + P[..., d, :d, None] * Q[..., d, None, :d]
        return self.sign * m.transpose(-1, -2)

    def covariate_transforms(self) -> torch.Tensor:
        """Effective ``B_ℓ`` per member, layer, head: (E, L, H, d, d)."""
        if self.config.parametrization == "pgd":
            return self.B
        if self.config.parametrization == "sparse_pgd":
            return torch.zeros_like(self.A)
        d = self.d
        if self.config.parametrization == "label_row":  # covariates never move
            return torch.zeros_like(self.query_columns[..., :d, :])
        return self.P[..., :d, :d] / self.P[..., d, d, None, None]

    @torch.no_grad()
    def set_matrices(self, P: torch.Tensor, Q: torch.Tensor) -> None:
        """Load explicit (E, L, H, d+1, d+1) matrices into a ``full`` model."""
        if self.config.parametrization != "full":
            raise ValueError(
                "set_matrices: needs parametrization 'full'; use set_pgd for pgd forms"
            )
        self.P.copy_(P.expand_as(self.P))
        self.Q.copy_(Q.expand_as(self.Q))

    @torch.no_grad()
    def set_label_row(self, b: torch.Tensor, A: torch.Tensor) -> None:
        """Load ``b`` (…, d+1) (last row of P) and ``A`` (…, d+1, d) (first d columns of Q)
        into a ``label_row`` model, broadcast to (E, L, H, …)."""
        if self.config.parametrization != "label_row":
            raise ValueError("set_label_row: needs parametrization 'label_row'")
        self.value_row.copy_(torch.as_tensor(b).to(self.value_row).expand_as(self.value_row))
        self.query_columns.copy_(
            torch.as_tensor(A).to(self.query_columns).expand_as(self.query_columns)
        )

    @torch.no_grad()
    def set_pgd(self, A: torch.Tensor, B: torch.Tensor | None = None) -> None:
        """Load preconditioners ``A`` and covariate maps ``B`` (None: B = 0), each (E, L, H, d, d)."""
        if self.config.parametrization == "full":
            P = torch.zeros_like(self.P)
            Q = torch.zeros_like(self.Q)
            d = self.d
            P[..., d, d] = 1.0
            if B is not None:
                P[..., :d, :d] = B
            Q[..., :d, :d] = self.sign * A.transpose(-1, -2)
            self.set_matrices(P, Q)
            return
        if self.config.parametrization == "label_row":
            raise ValueError("set_pgd: 'label_row' is not a pgd form; use set_label_row")
        if B is not None and self.config.parametrization == "sparse_pgd":
            raise ValueError("set_pgd: 'sparse_pgd' has B = 0; pass B=None")
        self.A.copy_(A.expand_as(self.A))
        if self.config.parametrization == "pgd":
            self.B.copy_(B.expand_as(self.B) if B is not None else torch.zeros_like(self.B))

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """``A`` (preconditioners), ``B`` (covariate maps), each (E, L, H, d, d), and the
        value and key-query matrices ``P``, ``Q`` (E, L, H, d+1, d+1), detached."""
        P, Q = self.matrices()
        out = {"A": self.preconditioners(), "B": self.covariate_transforms(), "P": P, "Q": Q}
        return {k: v.detach() for k, v in out.items()}

    def residual_stream(self, batch: PromptBatch) -> list[torch.Tensor]:
        """``[Z_0, …, Z_L]`` of a prompt batch (:meth:`forward_tokens`)."""
        return self.forward_tokens(batch.tokens())

    @classmethod
    def activation_bytes(cls, d: int, config: LSAConfig, tokens: int, itemsize: int) -> int:
        """Gram propagation keeps a few (d+1)² matrices per layer and prompt, never the tokens."""
        return (config.layers + 1) * config.heads * 4 * (d + 1) ** 2 * itemsize + tokens * (
            d + 1
        ) * itemsize

    # ----------------------------------------------------------------------------- forward
    @staticmethod
    def gram_state(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> GramState:
        """Precompute the data-only state: x (E, B, n, d), y (E, B, n), x_query (E, B, d)."""
        tokens = prompt_tokens(x, y, x_query)  # (E, B, n+1, D)
        z, q = tokens[..., :-1, :], tokens[..., -1, :]
        gram = (z.transpose(-1, -2) @ z).permute(0, 2, 3, 1).contiguous()
        return GramState(gram=gram, query=q.permute(0, 2, 1).contiguous(), n=x.shape[-2])

    def prepare(self, batch: PromptBatch) -> GramState:
        """Trainer hook: the data-only state of a prompt batch."""
        return self.gram_state(batch.x, batch.y, batch.x_query)

    def predict_prepared(self, state: GramState) -> torch.Tensor:
        """Trainer hook: predictions (E, B) from :meth:`prepare`'s state."""
        return self.predict_from_state(state)

    def predict_from_state(self, state: GramState) -> torch.Tensor:
        """Predictions (E, B) from a :class:`GramState` by Gram propagation."""
        P, Q = self.matrices()
        return _propagate(P, Q, state.gram, state.query, state.n, self.sign)

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B) for prompts x (E, B, n, d), y (E, B, n), x_query (E, B, d)."""
        return self.predict_from_state(self.gram_state(x, y, x_query))

    def prediction_jacobian(self, state: GramState, chunk: int = 8192) -> torch.Tensor:
        """Per-prompt gradient of every member's prediction with respect to that member's own
        parameters: (E, B, P), the parameters of ``named_parameters`` flattened in that order.

        Batched per-example gradients (``torch.func.vmap`` of ``grad`` over the prompt axis), in
        chunks of ``chunk`` prompts; members never interact, so the gradient of the sum of
        the members' predictions holds each member's own derivatives."""
        from torch.func import functional_call, grad, vmap

        wrapper = _GramPredictor(self)
        params = {k: v.detach() for k, v in wrapper.named_parameters()}
        E = self.ensemble_size

        def one(
            p: dict[str, torch.Tensor], gram: torch.Tensor, query: torch.Tensor
        ) -> torch.Tensor:
            pred = functional_call(wrapper, p, (gram.unsqueeze(-1), query.unsqueeze(-1), state.n))
            return pred.sum()

        per_prompt = vmap(grad(one), in_dims=(None, -1, -1))
        blocks = []
        for lo in range(0, state.gram.shape[-1], chunk):
            g = per_prompt(
                params, state.gram[..., lo : lo + chunk], state.query[..., lo : lo + chunk]
            )
            blocks.append(
                torch.cat([g[k].transpose(0, 1).reshape(E, g[k].shape[0], -1) for k in params], -1)
            )
        return torch.cat(blocks, dim=1)

    def forward_tokens(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream of every layer: ``[Z_0, …, Z_L]``, each (E, B, n+1, d+1), rows = tokens.

        The last row is the query; the prediction is ``sign · Z_L[..., -1, d]``.
        """
        P, Q = self.matrices()
        n = tokens.shape[-2] - 1
        Z = tokens
        out = [Z]
        for layer in range(self.config.layers):
            ctx = Z[..., :n, :]
            gram = ctx.transpose(-1, -2) @ ctx  # (E, B, D, D)
            Pt = P[:, layer].transpose(-1, -2).unsqueeze(1)  # (E, 1, H, D, D)
            Qt = Q[:, layer].transpose(-1, -2).unsqueeze(1)
            K = (Qt @ gram.unsqueeze(2) @ Pt).sum(2) / n  # (E, B, D, D)
            Z = Z + Z @ K
            out.append(Z)
        return out

    def predict_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predictions (E, B) via :meth:`forward_tokens` (slower; for inspection and tests)."""
        return self.sign * self.forward_tokens(tokens)[-1][..., -1, self.d]


class _GramPredictor(nn.Module):
    """The LSA as a function of a Gram state's tensors (for ``torch.func``)."""

    def __init__(self, lsa: LinearSelfAttention) -> None:
        super().__init__()
        self.lsa = lsa

    def forward(self, gram: torch.Tensor, query: torch.Tensor, n: int) -> torch.Tensor:
        return self.lsa.predict_from_state(GramState(gram=gram, query=query, n=n))


def _sandwich(Q: torch.Tensor, C: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``Qᵀ C Pᵀ`` per prompt and head: Q, P (E, H, D, D) shared; C (E, D, D, B) -> (E, H, D, D, B).

    The shared matrices make both products large GEMMs in eager mode (C viewed as (D, D·B));
    under ``torch.compile`` the broadcast-and-sum form fuses with the rest of the network.
    """
    if torch.compiler.is_compiling():
        Qt = Q.transpose(-1, -2).unsqueeze(-1)
        Pt = P.transpose(-1, -2).unsqueeze(-1)
        return _tiny_matmul(_tiny_matmul(Qt, C.unsqueeze(1)), Pt)
    D, B = C.shape[-2], C.shape[-1]
    left = Q.transpose(-1, -2) @ C.reshape(C.shape[0], 1, D, D * B)  # (E, H, D, D·B)
    left = left.reshape(*left.shape[:2], D, D, B)
    return P.unsqueeze(2) @ left  # out[i, j, b] = Σ_k P[j, k] (Qᵀ C)[i, k, b]


def _propagate(
    P: torch.Tensor, Q: torch.Tensor, gram: torch.Tensor, query: torch.Tensor, n: int, sign: float
) -> torch.Tensor:
    """Gram propagation. P, Q: (E, L, H, D, D); gram (E, D, D, B); query (E, D, B)."""
    L = P.shape[1]
    D = P.shape[-1]
    C, zq = gram, query
    for layer in range(L):
        Qt = Q[:, layer].transpose(-1, -2).unsqueeze(-1)
        if layer == L - 1:
            # only the label column of K is needed: K[:, d] = Σ_h Q_hᵀ C P_h[d, :]ᵀ / n
            p = P[:, layer, :, D - 1, :].unsqueeze(-1)  # (E, H, D, 1)
            Cp = (C.unsqueeze(1) * p.unsqueeze(-3)).sum(-2)  # (E, H, D, B)
            k = (Qt * Cp.unsqueeze(-3)).sum(-2).sum(1) / n  # (E, D, B)
            return sign * (zq[:, D - 1] + (zq * k).sum(1))
        K = _sandwich(Q[:, layer], C, P[:, layer]).sum(1) / n  # (E, D, D, B)
        zq = zq + (zq.unsqueeze(2) * K).sum(1)
        CK = _tiny_matmul(C, K)
        C = C + CK + CK.transpose(1, 2) + _tiny_matmul(K.transpose(1, 2), CK)
    raise AssertionError("unreachable")  # pragma: no cover
