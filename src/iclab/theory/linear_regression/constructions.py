"""Explicit LSA weights under which the model *is* a known algorithm.

All matrices follow :mod:`iclab.models.lsa`: the value and key-query matrices ``(P, Q)`` of a
``full`` :class:`~iclab.models.LinearSelfAttention` in the papers' column convention, shaped
``(E, L, H=1, d+1, d+1)`` (ensemble member, layer, head), float64; load them with
``model.set_matrices(P, Q)``. With iclab's row layout every token row moves as
``z ← z (I + K)``, ``K = Qᵀ C Pᵀ / n``, ``C = Σ_{i≤n} z_i z_iᵀ`` (context tokens only).

Algorithms (``X`` is n×d with rows ``x_i``, ``S = (1/n) XᵀX``, ``R(w) = (1/2n)‖Xw − y‖²``,
``∇R(w) = S w − (1/n) Xᵀ y``):

- **Preconditioned GD** (:func:`preconditioned_gd_weights`): ``w_0 = 0``,
  ``w_ℓ = w_{ℓ−1} − A_ℓ ∇R(w_{ℓ−1})`` for ℓ = 1..L, prediction ``x_qᵀ w_L``. Any (non-symmetric)
  ``A_ℓ``. Negative readout: ``P = [[0, 0], [0, 1]]``, ``Q = [[−A_ℓᵀ, 0], [0, 0]]``; the
  covariates never change, the context label slots hold the residuals ``y_i − x_iᵀ w_ℓ`` and the
  query label slot holds ``−x_qᵀ w_ℓ`` after layer ℓ.
- **GD++** (:func:`gd_plus_plus_weights`), see that function.

The positive readout (``ŷ = +Z_L[query, label]``). Every token, the query included, moves by the
same data-dependent linear map, and the query enters with label 0, so after a residual-tracking
layer the query slot holds ``−x_qᵀ w``. With ``P = [[0,0],[0,1]]``, ``Q = [[+Aᵀ,0],[0,0]]`` one
layer predicts ``+x_qᵀ A (1/n) Xᵀ y`` exactly (one PGD step), and that is what is returned for
``L = 1``. For ``L ≥ 2`` there is no exact construction of this kind: keeping covariates fixed,
the label slot of every token stays ``y + xᵀu_ℓ`` with ``u_ℓ = u_{ℓ−1} + M_ℓ (Xᵀy/n + S u_{ℓ−1})``
(``M_ℓ`` a weight matrix; a data-dependent multiple of ``y`` cannot be cancelled), so the
prediction ``x_qᵀ u_L`` would need ``Π_ℓ (1 + m_ℓ t) = 2 − Π_ℓ (1 − a_ℓ t)`` as polynomials in
``t`` when ``A_ℓ = a_ℓ I`` and ``M_ℓ = m_ℓ I``, whose roots are not real in general (for
``a = (1, −1)``, or ``L = 3`` with equal steps); for non-proportional ``A_ℓ`` already ``L = 2``
fails. Hence ``readout="positive"`` with ``L ≥ 2`` raises ``ValueError``.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["gd_plus_plus_weights", "preconditioned_gd_weights"]

Readout = Literal["negative", "positive"]


def _as_stack(name: str, m: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(m, dtype=torch.float64)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{name}: expected shape (L, d, d) or (E, L, d, d), got {tuple(t.shape)}")
    return t


def _check_readout(readout: str, layers: int) -> None:
    if readout not in ("negative", "positive"):
        raise ValueError(f"readout: must be 'negative' or 'positive', got {readout!r}")
    if readout == "positive" and layers > 1:
        raise ValueError(
            "readout='positive': exact L-step preconditioned GD is only constructible for L = 1 "
            "(the query's label slot tracks −x_qᵀ w; see iclab.theory.linear_regression.constructions)"
        )


def _assemble(
    A: torch.Tensor, B: torch.Tensor | None, readout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    E, L, d, _ = A.shape
    s = -1.0 if readout == "negative" else 1.0
    P = torch.zeros(E, L, 1, d + 1, d + 1, dtype=torch.float64, device=A.device)
    Q = torch.zeros_like(P)
    P[..., d, d] = 1.0
    Q[:, :, 0, :d, :d] = s * A.transpose(-1, -2)
    if B is not None:
        # covariate rows move by K[:d, :d] = Q_xxᵀ S P_xxᵀ = s A S P_xxᵀ; P_xx = −s B gives the
        # column form x ← (I − B S Aᵀ) x for both readouts
        P[:, :, 0, :d, :d] = -s * B
    return P, Q


def preconditioned_gd_weights(
    preconditioners: torch.Tensor, readout: Readout = "negative"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, Q)``, each ``(E, L, 1, d+1, d+1)`` float64 on the input's device, making a ``full``
    LSA run L PGD steps.

    ``preconditioners``: ``A_ℓ`` of shape ``(L, d, d)`` or ``(E, L, d, d)`` (any matrices). A
    ``full`` :class:`~iclab.models.LinearSelfAttention` with ``readout`` and these matrices
    (``set_matrices``) predicts ``x_qᵀ w_L`` where ``w_0 = 0``,
    ``w_ℓ = w_{ℓ−1} − A_ℓ ∇R(w_{ℓ−1})``, ``R(w) = (1/2n)‖Xw − y‖²``. Negative readout: any L;
    the context label slots hold ``y_i − x_iᵀ w_ℓ`` after layer ℓ. Positive readout: ``L = 1``
    only (see the module docstring for why ``L ≥ 2`` is impossible; raises ``ValueError``).
    Equivalently, ``sparse_pgd`` models take ``set_pgd(A)`` with the same ``A``.
    """
    A = _as_stack("preconditioners", preconditioners)
    _check_readout(readout, A.shape[1])
    return _assemble(A, None, readout)


def gd_plus_plus_weights(
    preconditioners: torch.Tensor, covariate_maps: torch.Tensor, readout: Readout = "negative"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, Q)``, each ``(E, L, 1, d+1, d+1)`` float64 on the inputs' device, making a ``full``
    LSA run GD++.

    ``P = [[B_ℓ, 0], [0, 1]]``, ``Q = [[−A_ℓᵀ, 0], [0, 0]]`` (negative readout). The model then
    computes exactly, for one prompt (``X_0 = X`` with rows ``x_i``, ``x_{q,0} = x_q``,
    ``r_0 = y``), for ℓ = 1..L:

        S_ℓ = (1/n) X_{ℓ−1}ᵀ X_{ℓ−1}
        Δ_ℓ = A_ℓ (1/n) X_{ℓ−1}ᵀ r_{ℓ−1}                 (PGD step on the current covariates)
        r_ℓ = r_{ℓ−1} − X_{ℓ−1} Δ_ℓ                       (context label slots: residuals)
        T_ℓ = I − B_ℓ S_ℓ A_ℓᵀ;  x_{i,ℓ} = T_ℓ x_{i,ℓ−1},  x_{q,ℓ} = T_ℓ x_{q,ℓ−1}

    and predicts ``ŷ = Σ_ℓ x_{q,ℓ−1}ᵀ Δ_ℓ`` (the query label slot holds ``−ŷ`` so far). With
    ``B = 0`` this is :func:`preconditioned_gd_weights`. It is also what a ``pgd`` model with
    ``set_pgd(A, B)`` and the negative readout computes. The last ``B_L`` never reaches the
    prediction. ``preconditioners`` and ``covariate_maps``: ``(L, d, d)`` or ``(E, L, d, d)``.

    Positive readout: ``L = 1`` only (``P = [[−B, 0], [0, 1]]``, ``Q = [[Aᵀ, 0], [0, 0]]``, the
    same algorithm and covariate update ``T_1``); ``L ≥ 2`` raises ``ValueError`` (module
    docstring).
    """
    A = _as_stack("preconditioners", preconditioners)
    B = _as_stack("covariate_maps", covariate_maps)
    A, B = torch.broadcast_tensors(A, B)
    _check_readout(readout, A.shape[1])
    return _assemble(A, B, readout)
