"""Classic per-prompt classifiers fitted on each prompt's context (Ding et al., 2025 baselines).

Ding et al. compare in-context learners on Markov-chain prompts against classic learners fitted
on the context of each prompt: linear regression, logistic regression, a linear SVM and 3-NN.
Prompts follow iclab's row convention with a leading ensemble dimension:

- ``x``: (E, B, n, d) context covariates, ``y``: (E, B, n) context labels, discrete states
  ``{0, …, S−1}`` stored as floats (``S = num_states ≥ 2``),
- ``x_query``: (E, B, d) query covariates,

and every learner returns a :class:`ClassifierPrediction` with the predicted state (E, B). All
computations are batched over ``(E, B)`` (and over states): the iterative solvers loop over
Newton iterations only, never over prompts; everything runs on the inputs' device and dtype.

Each learner matches a scikit-learn estimator fitted prompt by prompt on that prompt's context
(checked in ``tests/test_classic_baselines.py``):

- :func:`linear_regression_classifier`: ``Ridge(alpha=ridge)`` (``LinearRegression()`` for
  ``ridge = 0``), prediction rounded and clipped to a state;
- :func:`logistic_regression`: ``LogisticRegression(C=1/l2)`` (L2 penalty; binary for two
  present states, multinomial for more);
- :func:`linear_svm`: ``LinearSVC(C=C)`` (squared hinge, penalized intercept, one-vs-rest);
- :func:`k_nearest_neighbors`: ``KNeighborsClassifier(n_neighbors=k)``.

**States absent from a context.** scikit-learn fits only the classes present in the training
labels, so it never predicts an absent state. The same holds here: absent states get probability
exactly 0 (logistic regression; this is the infimum of the objective, reached as the absent
class's unpenalized intercept → −∞) and decision score ``−inf`` (SVM). A context with a single
present state (where scikit-learn refuses to fit) predicts that state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from iclab.prompt_shapes import check_prompts

__all__ = [
    "ClassifierPrediction",
    "k_nearest_neighbors",
    "linear_regression_classifier",
    "linear_svm",
    "logistic_regression",
]


@dataclass(frozen=True)
class ClassifierPrediction:
    """Output of a batched per-prompt classifier.

    Attributes:
        state: (E, B) long, the predicted state of each query, in ``{0, …, S−1}``.
        value: (E, B) float, a real-valued prediction: the regression output (linear regression),
            the expected state ``Σ_s s·p_s`` (logistic regression, k-NN with vote fractions as
            ``p``) or the predicted state as a float (SVM).
        probabilities: (E, B, S) class probabilities (logistic regression; vote fractions for
            k-NN, as ``KNeighborsClassifier.predict_proba``), else None.
        scores: (E, B, S) per-state scores whose argmax is ``state``: the logits (logistic
            regression) or the one-vs-rest decision values (SVM); ``−inf`` for states absent
            from the context. None for the other learners.
        weights: fitted linear weights, (E, B, S, d) per state (logistic regression, SVM) or
            (E, B, d) (linear regression); None for k-NN.
        intercept: fitted intercepts, (E, B, S) or (E, B) to match ``weights`` (zeros when
            ``fit_intercept=False``); None for k-NN.
        converged: (E, B) bool for the iterative solvers (logistic regression, SVM; for the SVM
            all states of a prompt must have converged), else None.
    """

    state: torch.Tensor
    value: torch.Tensor
    probabilities: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    intercept: torch.Tensor | None = None
    converged: torch.Tensor | None = None


# ------------------------------------------------------------------------------ validation
def _check_num_states(num_states: int) -> int:
    if isinstance(num_states, bool) or not isinstance(num_states, int) or num_states < 2:
        raise ValueError(f"num_states: expected an integer >= 2, got {num_states!r}")
    return num_states


def _check_classification(
    x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, num_states: int
) -> tuple[int, int, torch.Tensor]:
    """Validate prompts and labels; return ``(n, d, labels)`` with labels (E, B, n) long."""
    n, d = check_prompts(x, y, x_query)
    _check_num_states(num_states)
    if n < 1:
        raise ValueError("x: need at least one context example (n >= 1)")
    bad = (y != torch.round(y)) | (y < 0) | (y > num_states - 1)  # NaN counts as bad
    if bad.any():
        raise ValueError(
            f"y: labels must be integers in {{0, …, {num_states - 1}}} (num_states = "
            f"{num_states}), got {y[bad].flatten()[:5].tolist()}"
        )
    return n, d, y.long()


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    v = float(value)
    if not (v == v and abs(v) != float("inf")) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0")
    return v


def _check_iterations(iterations: int) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations: expected an integer >= 1, got {iterations!r}")
    return iterations


def _augment(x: torch.Tensor, fit_intercept: bool, scaling: float = 1.0) -> torch.Tensor:
    """``[x, scaling]`` (a constant last column) when fitting an intercept, else ``x``."""
    if not fit_intercept:
        return x
    return torch.cat([x, torch.full_like(x[..., :1], scaling)], dim=-1)


# ------------------------------------------------------------------------------ Newton solver
def _newton_minimize(
    objective: Callable[[torch.Tensor], torch.Tensor],
    derivatives: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    theta: torch.Tensor,
    iterations: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched damped (generalized) Newton method for strictly convex objectives.

    ``theta`` is (…, m); ``objective(theta)`` -> f (…,), ``derivatives(theta)`` -> (f (…,),
    gradient g (…, m), Hessian H (…, m, m), positive definite). Each problem takes Newton steps
    ``Δ = H⁻¹g`` with an Armijo backtracking line search (step sizes ``2⁻ʲ, j < 40``). Once
    ``‖Δ‖∞ ≤ tol·(1 + ‖θ‖∞)`` it takes that last full step and stops as converged (Newton
    converges quadratically there, so the final error is ~``tol²``). Full steps are also taken
    without a line search once the Newton decrement ``gᵀΔ`` is below ``2√eps·(1 + |f|)``, where
    round-off would defeat the Armijo test; a problem where no step size passes the test stops
    as not converged. Returns ``(theta, converged)``, converged (…,) bool.
    """
    sqrt_eps = torch.finfo(theta.dtype).eps ** 0.5
    done = torch.zeros(theta.shape[:-1], dtype=torch.bool, device=theta.device)
    converged = torch.zeros_like(done)
    for _ in range(iterations):
        f, g, h = derivatives(theta)
        step = torch.linalg.solve(h, g.unsqueeze(-1)).squeeze(-1)
        small = step.abs().amax(-1) <= tol * (1 + theta.abs().amax(-1))
        decrement = (g * step).sum(-1)
        t = torch.ones_like(f)
        accepted = done | small | (decrement <= 2 * sqrt_eps * (1 + f.abs()))
        for _ in range(40):
            pending = ~accepted
            if not bool(pending.any()):
                break
            ok = objective(theta - t.unsqueeze(-1) * step) <= f - 1e-4 * t * decrement
            accepted = accepted | (pending & ok)
            t = torch.where(pending & ~ok, t / 2, t)
        move = accepted & ~done
        theta = torch.where(move.unsqueeze(-1), theta - t.unsqueeze(-1) * step, theta)
        converged = converged | (small & ~done)
        done = done | small | ~accepted
        if bool(done.all()):
            break
    return theta, converged


# ------------------------------------------------------------------------------ public API
def linear_regression_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    num_states: int,
    ridge: float = 1e-6,
    fit_intercept: bool = True,
) -> ClassifierPrediction:
    """Least-squares regression of the state labels on ``[x, 1]``, rounded to a state.

    Fits ``min_{w,b} Σ_i (y_i − wᵀx_i − b)² + ridge·‖w‖²`` per prompt (the intercept ``b`` is not
    penalized: ``x`` and ``y`` are centred, as scikit-learn does), i.e. ``Ridge(alpha=ridge)``;
    the small default ridge keeps rank-deficient contexts (``n ≤ d``, repeated binary rows)
    well-posed. ``ridge = 0`` gives the minimum-norm least-squares fit of
    ``LinearRegression()`` (singular values of the centred ``X`` below ``max(n, d)·eps·s_max``
    count as zero). The predicted state is the prediction rounded (half to even,
    ``torch.round``) and clipped to ``{0, …, S−1}``.

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels in ``{0, …, S−1}`` (floats).
        x_query: (E, B, d) query covariates.
        num_states: ``S ≥ 2``, the number of states (for the clipping and label check).
        ridge: penalty ``≥ 0`` on ``‖w‖²``.
        fit_intercept: fit ``b`` (else ``b = 0`` and nothing is centred).

    Returns:
        :class:`ClassifierPrediction` with ``value`` the real prediction (E, B), ``state``,
        ``weights`` (E, B, d) and ``intercept`` (E, B).
    """
    n, d, _ = _check_classification(x, y, x_query, num_states)
    ridge = _check_positive("ridge", ridge, allow_zero=True)
    if fit_intercept:
        x_mean, y_mean = x.mean(-2), y.mean(-1)
        xc, yc = x - x_mean.unsqueeze(-2), y - y_mean.unsqueeze(-1)
    else:
        xc, yc = x, y
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)  # (…, n, k), (…, k), (…, k, d)
    keep = s > max(n, d) * torch.finfo(x.dtype).eps * s[..., :1]
    s_safe = torch.where(keep, s, torch.ones_like(s))
    coef = torch.where(keep, s_safe / (s_safe * s_safe + ridge), torch.zeros_like(s))
    uty = (u * yc.unsqueeze(-1)).sum(-2)
    w = ((coef * uty).unsqueeze(-1) * vh).sum(-2)  # (E, B, d)
    b = y_mean - (x_mean * w).sum(-1) if fit_intercept else torch.zeros_like(w[..., 0])
    value = (x_query * w).sum(-1) + b
    state = torch.round(value).clamp(0, num_states - 1).long()
    return ClassifierPrediction(state=state, value=value, weights=w, intercept=b)


def logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    num_states: int,
    l2: float = 1.0,
    iterations: int = 100,
    tol: float | None = None,
    fit_intercept: bool = True,
) -> ClassifierPrediction:
    """L2-penalized logistic regression per prompt, as ``LogisticRegression(C=1/l2)``.

    With ``K`` the number of states present in the context, the model is the one scikit-learn
    (≥ 1.5, default lbfgs solver) fits:

    - ``K ≥ 3``: multinomial (softmax) over the present states, minimizing
      ``Σ_i −log p_{y_i}(x_i) + (l2/2) Σ_s ‖w_s‖²`` with ``p_s(x) ∝ exp(w_sᵀx + b_s)`` and
      unpenalized intercepts ``b_s``;
    - ``K = 2`` (states ``a < c``): binary logistic regression ``p_c = σ(vᵀx + β)`` minimizing
      ``Σ_i −log p_{y_i} + (l2/2)‖v‖²``. This equals the two-state softmax with penalty ``l2``
      on each ``w_s`` *doubled*; it is fitted in that form, so ``weights[c] = −weights[a] = v/2``
      (scikit-learn's ``coef_`` is ``v = weights[c] − weights[a]``). Note: a plain two-class
      softmax with the same ``l2`` would regularize half as much (``C`` doubled).
    - ``K = 1``: that state, with probability 1.

    Absent states get probability 0 and logit ``−inf`` (module docstring). Intercepts are
    determined up to a common shift; they are returned centred over the present states. The
    solver is Newton's method with an Armijo line search, batched over prompts (Hessian of size
    ``S(d+1)``); it stops after the first Newton step with ``‖Δ‖∞ ≤ tol·(1 + ‖θ‖∞)`` (default
    ``tol = √eps`` of the dtype; the error after that step is ~``tol²``).

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels in ``{0, …, S−1}`` (floats).
        x_query: (E, B, d) query covariates.
        num_states: ``S ≥ 2``.
        l2: penalty strength ``> 0`` (``= 1/C``).
        iterations: maximum Newton iterations (≈ 5–15 are typically needed).
        tol: relative tolerance on the last Newton step.
        fit_intercept: fit the intercepts ``b_s`` (else they are 0).

    Returns:
        :class:`ClassifierPrediction` with ``probabilities`` (E, B, S), ``state`` (argmax, the
        smallest state among exact ties), ``value`` the expected state ``Σ_s s·p_s``, ``scores``
        the logits, ``weights`` (E, B, S, d), ``intercept`` (E, B, S) and ``converged``.
    """
    _, d, labels = _check_classification(x, y, x_query, num_states)
    l2 = _check_positive("l2", l2)
    iterations = _check_iterations(iterations)
    tol = torch.finfo(x.dtype).eps ** 0.5 if tol is None else _check_positive("tol", tol)
    S = num_states
    xa = _augment(x, fit_intercept)  # (E, B, n, p)
    p = xa.shape[-1]
    onehot = torch.nn.functional.one_hot(labels, S).to(x.dtype)  # (E, B, n, S)
    present = onehot.sum(-2) > 0  # (E, B, S)
    n_present = present.sum(-1, keepdim=True)  # (E, B, 1)
    # Binary contexts: sklearn's binary model = two-state softmax with the penalty doubled.
    lam = l2 * torch.where(n_present == 2, 2.0, 1.0).to(x.dtype).unsqueeze(-1)  # (E, B, 1, 1)
    pen_mask = torch.ones(p, dtype=x.dtype, device=x.device)
    if fit_intercept:
        pen_mask[-1] = 0
    # Constant Hessian terms: the penalty, plus on the intercepts (which the objective leaves
    # free up to a common shift) (1/K)·m mᵀ over present states m, which fixes that shift without
    # changing the step (the gradient is orthogonal to it), and 1 for absent states (held at 0).
    eye_s = torch.eye(S, dtype=x.dtype, device=x.device)
    eye_p = torch.eye(p, dtype=x.dtype, device=x.device)
    h_const = lam[..., None, None] * torch.einsum("st,jk->sjtk", eye_s, eye_p * pen_mask)
    if fit_intercept:
        m = present.to(x.dtype)
        gauge = m.unsqueeze(-1) * m.unsqueeze(-2) / n_present.to(x.dtype).unsqueeze(-1)
        gauge = gauge + torch.diag_embed(1 - m)
        h_const[..., :, p - 1, :, p - 1] += gauge
    h_const = h_const.reshape(*x.shape[:2], S * p, S * p)
    mask_inf = torch.zeros_like(present, dtype=x.dtype).masked_fill(~present, float("-inf"))
    outer_x = xa.unsqueeze(-1) * xa.unsqueeze(-2)  # (E, B, n, p, p)

    def logits_of(theta: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        w = theta.unflatten(-1, (S, p))  # (…, S, p)
        return feats @ w.transpose(-1, -2) + mask_inf.unsqueeze(-2)  # (…, n, S)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits_of(theta, xa), dim=-1)
        nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)
        w = theta.unflatten(-1, (S, p)) * pen_mask
        return nll + lam[..., 0, 0] / 2 * (w * w).sum((-1, -2))

    def derivatives(theta: torch.Tensor):
        logp = torch.log_softmax(logits_of(theta, xa), dim=-1)
        prob = logp.exp()  # (E, B, n, S); exactly 0 for absent states
        nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)
        w = theta.unflatten(-1, (S, p)) * pen_mask
        f = nll + lam[..., 0, 0] / 2 * (w * w).sum((-1, -2))
        grad = (prob - onehot).transpose(-1, -2) @ xa + lam * w  # (E, B, S, p)
        cov = torch.diag_embed(prob) - prob.unsqueeze(-1) * prob.unsqueeze(-2)  # (E, B, n, S, S)
        h = torch.einsum("...nst,...njk->...sjtk", cov, outer_x).reshape(h_const.shape)
        return f, grad.flatten(-2), h + h_const

    theta0 = torch.zeros(*x.shape[:2], S * p, dtype=x.dtype, device=x.device)
    theta, converged = _newton_minimize(objective, derivatives, theta0, iterations, tol)
    theta = theta.unflatten(-1, (S, p))
    logits = logits_of(theta.flatten(-2), _augment(x_query, fit_intercept).unsqueeze(-2))
    logits = logits.squeeze(-2)  # (E, B, S)
    prob = torch.softmax(logits, dim=-1)
    states = torch.arange(S, dtype=x.dtype, device=x.device)
    weights = theta[..., :d]
    intercept = theta[..., d] if fit_intercept else torch.zeros_like(theta[..., 0])
    return ClassifierPrediction(
        state=prob.argmax(-1),
        value=(prob * states).sum(-1),
        probabilities=prob,
        scores=logits,
        weights=weights,
        intercept=intercept,
        converged=converged,
    )


def linear_svm(
    x: torch.Tensor,
    y: torch.Tensor,
    x_query: torch.Tensor,
    num_states: int,
    C: float = 1.0,
    iterations: int = 100,
    tol: float | None = None,
    fit_intercept: bool = True,
    intercept_scaling: float = 1.0,
) -> ClassifierPrediction:
    """One-vs-rest linear SVM with the squared hinge loss, as ``LinearSVC(C=C)`` (liblinear).

    For each state ``s`` (targets ``t_i = +1`` if ``y_i = s`` else ``−1``) minimizes, per prompt,

        (1/2)‖w̃‖² + C Σ_i max(0, 1 − t_i w̃ᵀx̃_i)²,   x̃ = [x, intercept_scaling],

    the objective of ``LinearSVC(penalty='l2', loss='squared_hinge', C=C, fit_intercept=True,
    intercept_scaling=intercept_scaling)``: as liblinear does, the intercept is the weight of a
    synthetic constant feature and *is penalized* (``b = intercept_scaling·w̃_{d+1}``, penalty
    ``(1/2)(b/intercept_scaling)²``). The predicted state is the argmax of the decision values
    ``wᵀx_q + b`` over the states present in the context (absent states score ``−inf``; the
    smallest state wins exact ties, as numpy's argmax in ``LinearSVC.predict``). With exactly two
    present states ``a < c`` the two one-vs-rest problems are mirror images (``w_a = −w_c``), so
    this is the single binary SVM that scikit-learn fits (its ``coef_`` is ``weights[c]``;
    ``c`` wins iff its decision value is ``> 0``).

    The squared hinge is continuously differentiable; it is minimized by the generalized Newton
    method (Hessian ``I + 2C Σ_{active} x̃x̃ᵀ``) with an Armijo line search, batched over prompts
    and states; it stops after the first Newton step with ``‖Δ‖∞ ≤ tol·(1 + ‖w̃‖∞)`` (default
    ``tol = √eps`` of the dtype), typically after 3–10 iterations.

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels in ``{0, …, S−1}`` (floats).
        x_query: (E, B, d) query covariates.
        num_states: ``S ≥ 2``.
        C: inverse regularization strength ``> 0``.
        iterations: maximum Newton iterations.
        tol: relative tolerance on the last Newton step.
        fit_intercept: append the synthetic intercept feature (else ``b = 0``).
        intercept_scaling: value ``> 0`` of the synthetic feature.

    Returns:
        :class:`ClassifierPrediction` with ``state``, ``value`` (the state as a float),
        ``scores`` (E, B, S) decision values, ``weights`` (E, B, S, d), ``intercept`` (E, B, S)
        and ``converged``.
    """
    _, d, labels = _check_classification(x, y, x_query, num_states)
    C = _check_positive("C", C)
    scaling = _check_positive("intercept_scaling", intercept_scaling)
    iterations = _check_iterations(iterations)
    tol = torch.finfo(x.dtype).eps ** 0.5 if tol is None else _check_positive("tol", tol)
    S = num_states
    xa = _augment(x, fit_intercept, scaling).unsqueeze(-3)  # (E, B, 1, n, p)
    p = xa.shape[-1]
    onehot = torch.nn.functional.one_hot(labels, S).to(x.dtype)  # (E, B, n, S)
    present = onehot.sum(-2) > 0  # (E, B, S)
    targets = (2 * onehot - 1).transpose(-1, -2)  # (E, B, S, n)
    eye = torch.eye(p, dtype=x.dtype, device=x.device)

    def slack(w: torch.Tensor) -> torch.Tensor:
        return torch.relu(1 - targets * (xa @ w.unsqueeze(-1)).squeeze(-1))  # (E, B, S, n)

    def objective(w: torch.Tensor) -> torch.Tensor:
        r = slack(w)
        return (w * w).sum(-1) / 2 + C * (r * r).sum(-1)

    def derivatives(w: torch.Tensor):
        r = slack(w)
        f = (w * w).sum(-1) / 2 + C * (r * r).sum(-1)
        grad = w - 2 * C * ((r * targets).unsqueeze(-2) @ xa).squeeze(-2)
        active = (r > 0).to(x.dtype)  # generalized Hessian of the squared hinge
        h = eye + 2 * C * (xa * active.unsqueeze(-1)).transpose(-1, -2) @ xa
        return f, grad, h

    w0 = torch.zeros(*x.shape[:2], S, p, dtype=x.dtype, device=x.device)
    w, converged = _newton_minimize(objective, derivatives, w0, iterations, tol)
    weights = w[..., :d]
    intercept = scaling * w[..., d] if fit_intercept else torch.zeros_like(w[..., 0])
    scores = (weights * x_query.unsqueeze(-2)).sum(-1) + intercept
    scores = scores.masked_fill(~present, float("-inf"))
    state = scores.argmax(-1)
    return ClassifierPrediction(
        state=state,
        value=state.to(x.dtype),
        scores=scores,
        weights=weights,
        intercept=intercept,
        converged=converged.all(-1),
    )


def k_nearest_neighbors(
    x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, num_states: int, k: int = 3
) -> ClassifierPrediction:
    """Majority vote of the ``k`` context points nearest to the query (Euclidean distance).

    Matches ``KNeighborsClassifier(n_neighbors=k)`` (uniform weights): the vote fractions are
    its ``predict_proba`` and the predicted state is the most frequent state among the ``k``
    neighbours, the **smallest state among tied counts** (scikit-learn's argmax of the vote
    counts). Distance ties at the ``k``-th neighbour are broken by **context order** (the
    earlier example is nearer; a stable sort). scikit-learn leaves that case to its tree or
    ``argpartition`` order, so the two can differ only when the ``k``-th and ``(k+1)``-th
    distances are exactly equal (common with discrete Markov-chain covariates). Squared
    distances are computed as ``Σ_j (x_ij − x_qj)²`` directly (not through a Gram matrix, as
    ``torch.cdist`` may), so equal difference vectors give exactly equal distances.

    Args:
        x: (E, B, n, d) context covariates.
        y: (E, B, n) context labels in ``{0, …, S−1}`` (floats).
        x_query: (E, B, d) query covariates.
        num_states: ``S ≥ 2``.
        k: number of neighbours, ``1 ≤ k ≤ n``.

    Returns:
        :class:`ClassifierPrediction` with ``state``, ``probabilities`` (E, B, S) the vote
        fractions and ``value`` the mean neighbour label ``Σ_s s·p_s``.
    """
    n, _, labels = _check_classification(x, y, x_query, num_states)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k: expected an integer with 1 <= k <= n = {n}, got {k!r}")
    diff = x - x_query.unsqueeze(-2)
    dist2 = (diff * diff).sum(-1)  # (E, B, n)
    nearest = torch.sort(dist2, dim=-1, stable=True).indices[..., :k]
    votes = torch.nn.functional.one_hot(labels.gather(-1, nearest), num_states).sum(-2)
    prob = votes.to(x.dtype) / k  # (E, B, S)
    states = torch.arange(num_states, dtype=x.dtype, device=x.device)
    return ClassifierPrediction(
        state=votes.argmax(-1),  # first maximal index: the smallest tied state
        value=(prob * states).sum(-1),
        probabilities=prob,
    )
