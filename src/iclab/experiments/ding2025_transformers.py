"""Parts (d) and (e) of ``iclab reproduce ding2025``: Ding et al. (NeurIPS 2025).

**(d) Softmax transformers vs classic learners.** GPT-2-style softmax transformers of each size
in ``budget.sizes`` (:mod:`iclab.models.softmax_transformer`) are trained with the square loss
on the state value on Markov-chain prompts (d = 5, ``n_train`` = 20 context chains, |S| =
``budget.states``). The task settings and why:

- ``dirichlet_alpha = 1``: for |S| = 2 the kernel's ``p01, p10 ~ U(0, 1)`` (the paper's binary
  prompts; U(0, 1) rows are Dirichlet(1, 1) rows), for |S| > 2 uniform Dirichlet rows, the
  paper's |S|-state variant;
- ``initial_prob = 0.5`` and ``initial_correlation = 0``: the first state is a fair coin (uniform
  for |S| > 2) independent of the kernel and across chains, so starts carry no information and
  the closed-form Bayes predictor (:func:`~iclab.theory.markov_chain.bayes.markov_posterior_predictive`,
  one kernel per prompt) is exactly the ceiling;
- ``mixture = 1``: one kernel per prompt, as in the paper's main experiments.

Each trained model is evaluated on fresh test prompts (stream ``"ding2025_eval"``) restricted to
their first k context chains for every k in ``budget.context_sizes`` (the transformer has no
positional encoding, so it takes any number of chains); a prediction counts as correct when,
rounded to the nearest state and clipped to ``{0, …, |S|−1}``, it equals ``y_q``. On the same
prompts: logistic regression (C = 1), linear regression (ridge 1e-6, rounded), a linear SVM
(C = 1) and 3-NN (:mod:`iclab.algorithms.classic_baselines`; scikit-learn's defaults), fitted on
each prompt's k chains with ``x = s_{1:d}`` as features; k-NN uses ``min(3, k)`` neighbours
(3-NN is undefined with fewer than 3 chains), and the Bayes posterior mode is the ceiling.
Confidence bands are percentile-bootstrap 95% intervals of the accuracy over test prompts
*pooled over seeds* (:func:`~iclab.analysis.metrics.bootstrap_ci`; the same resamples for every
method, so comparisons are paired); the between-seed spread of the trained models is the std in
the report rows.

**(e) Attention vs sequence similarity.** A tiny transformer is trained on prompts whose chains
each use one of k = 2 kernels (binary, d = 5, n = ``mixture_n``). On fresh test prompts the
query's attention to each context chain (mean over heads and layers for the report rows,
every layer in the figure and the notes) is related to (i) whether the chain uses the query's kernel
(``assignments``) and (ii) a continuous similarity: the **cosine similarity of transition-count
vectors** (counts of a → b over the chain's d transitions and the query's d − 1 observed
transitions; :func:`transition_similarity`). Transition counts are the sufficient statistics of
a kernel, so this measures "same dynamics" rather than "same states at the same times" (which
the Hamming distance would, and which two chains of one kernel need not share).

The runs are declared by :func:`runs_d` / :func:`runs_e` (typed configs) and analysed by
:func:`analyze_d` / :func:`analyze_e` from the finished run folders only; :func:`part_d` /
:func:`part_e` train and analyse in one call. Every claim row uses the report contract v2:
the Bayes ceiling is an identity (``check``: no model beats it beyond noise), the comparisons
with the classic learners and the attention statistics are claims decided at 3 standard
errors (over test prompts pooled over seeds, paired where two methods see the same prompts).
All evaluation is batched over prompts (chunks of prompts at most).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from iclab.algorithms.classic_baselines import (
    k_nearest_neighbors,
    linear_regression_classifier,
    linear_svm,
    logistic_regression,
)
from iclab.analysis.figures import save_figure
from iclab.analysis.metrics import bootstrap_ci, mean_std
from iclab.analysis.report import ReportRow, Tolerance, claim, compare, standard_error
from iclab.config import RunConfig, make_config
from iclab.experiments.experiment import Run, RunSet, train_runs
from iclab.theory.markov_chain.bayes import markov_posterior_predictive
from iclab.training import TrainResult

__all__ = [
    "FULL",
    "QUICK",
    "AttentionSimilarity",
    "TransformerBudget",
    "analyze_d",
    "analyze_e",
    "attention_similarity",
    "part_d",
    "part_e",
    "query_attention",
    "rank_correlation",
    "runs_d",
    "runs_e",
    "transition_similarity",
]

EVAL_PURPOSE = "ding2025_eval"
ATTENTION_PURPOSE = "ding2025_attention"
BASELINES = ("logistic regression", "linear regression", "linear SVM", "3-NN")
BAYES = "Bayes (posterior mode)"
_CHUNK = 1024  # prompts per forward pass in evaluation


@dataclass(frozen=True)
class TransformerBudget:
    """Training and evaluation sizes of parts (d) and (e).

    ``steps``/``batch_size``/``lr`` apply to every run (Adam, cosine schedule to ``0.1·lr`` after
    ``warmup_steps``); ``test_size`` is the number of fresh evaluation prompts per seed
    (``train_test_size`` the trainer's own test set); ``resamples`` the bootstrap resamples.
    """

    seeds: int
    sizes: tuple[str, ...]
    steps: int
    batch_size: int
    test_size: int
    context_sizes: tuple[int, ...] = (1, 2, 5, 10, 20)
    lr: float = 1e-3
    warmup_steps: int = 50
    eval_every: int = 100
    checkpoint_every: int = 500
    train_test_size: int = 500
    resamples: int = 1000
    states: int = 2
    d: int = 5
    n_train: int = 20
    mixture: int = 2  # (e): kernels per prompt
    mixture_n: int = 10  # (e): context chains per prompt
    mixture_size: str = "tiny"  # (e): transformer size
    mixture_steps: int = 1500
    mixture_test_size: int = 1000


QUICK = TransformerBudget(
    seeds=3,
    sizes=("tiny", "small"),
    steps=800,
    batch_size=64,
    test_size=1000,
    mixture_steps=1500,
    mixture_test_size=1000,
)
#: sized for ≤ 60 CPU minutes of the whole full reproduction: measured on 2 cores with 5 seeds
#: and batch 64, a step takes ≈ 0.04 s (tiny), 0.2 s (small) and 0.73 s (standard), so the three
#: sizes at 1200 steps take ≈ 19 minutes
FULL = TransformerBudget(
    seeds=5,
    sizes=("tiny", "small", "standard"),
    steps=1200,
    batch_size=64,
    test_size=2000,
    warmup_steps=100,
    eval_every=200,
    checkpoint_every=400,
    train_test_size=1000,
    mixture_steps=3000,
    mixture_test_size=2000,
)


# ------------------------------------------------------------------------------ runs
def _config(
    name: str, task: dict, size: str, steps: int, budget: TransformerBudget, device: str
) -> RunConfig:
    """The typed config of one transformer run (``steps = 0`` evaluates the initialization)."""
    return make_config(
        {
            "name": name,
            "n_seeds": budget.seeds,
            "device": device,
            "task": task,
            "model": {"kind": "softmax_transformer", "size": size},
            "train": {
                "optimizer": "adam",
                "lr": budget.lr,
                "steps": steps,
                "batch_size": budget.batch_size,
                "test_size": budget.train_test_size,
                "eval_every": max(1, min(budget.eval_every, steps)),
                "checkpoint_every": max(1, min(budget.checkpoint_every, steps)),
                "schedule": {
                    "kind": "cosine",
                    "warmup_steps": max(0, min(budget.warmup_steps, steps - 1)),
                    "min_factor": 0.1,
                },
            },
        }
    )


def _d_task(budget: TransformerBudget) -> dict:
    return {
        "kind": "markov_chain",
        "d": budget.d,
        "n": budget.n_train,
        "states": budget.states,
        "initial_prob": 0.5,
        "dirichlet_alpha": 1.0,
        "initial_correlation": 0.0,
        "mixture": 1,
    }


def _d_name(budget: TransformerBudget, size: str) -> str:
    return f"d_{size}_S{budget.states}"


def _e_name(budget: TransformerBudget) -> str:
    return f"e_mixture{budget.mixture}_{budget.mixture_size}"


def runs_d(budget: TransformerBudget, device: str = "auto") -> list[Run]:
    """(d): one run per transformer size (no training happens here)."""
    _check_context_sizes(budget)
    task = _d_task(budget)
    return [
        Run(_d_name(budget, size), _config(_d_name(budget, size), task, size, budget.steps,
                                           budget, device))
        for size in budget.sizes
    ]  # fmt: skip


def runs_e(budget: TransformerBudget, device: str = "auto") -> list[Run]:
    """(e): one run on prompts that mix ``budget.mixture`` kernels."""
    task = {
        "kind": "markov_chain",
        "d": budget.d,
        "n": budget.mixture_n,
        "states": 2,
        "initial_prob": 0.5,
        "initial_correlation": 0.0,
        "mixture": budget.mixture,
    }
    name = _e_name(budget)
    cfg = _config(name, task, budget.mixture_size, budget.mixture_steps, budget, device)
    return [Run(name, cfg)]


def _chunked(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """``fn`` over chunks of the prompt dimension (dim 1) of (E, B, …) tensors, concatenated."""
    B = tensors[0].shape[1]
    with torch.no_grad():
        return torch.cat(
            [fn(*(t[:, i : i + _CHUNK] for t in tensors)) for i in range(0, B, _CHUNK)], dim=1
        )


# ------------------------------------------------------------------------------ part (d)
def _check_context_sizes(budget: TransformerBudget) -> tuple[int, ...]:
    ks = tuple(sorted(set(budget.context_sizes)))
    if not ks or ks[0] < 1 or ks[-1] > budget.n_train:
        raise ValueError(
            f"context_sizes: expected values in 1..n_train={budget.n_train}, "
            f"got {budget.context_sizes}"
        )
    return ks


def _method_states(
    models: dict[str, torch.nn.Module], batch, k: int, num_states: int
) -> dict[str, torch.Tensor]:
    """Predicted states (E, B) of every method on the prompts cut to their first k chains."""
    b64 = batch.to(torch.float64)
    x, y, xq = b64.x[:, :, :k], b64.y[:, :, :k], b64.x_query
    alpha = batch.config.dirichlet_alpha
    out = {
        BAYES: markov_posterior_predictive(x, y, xq, num_states, alpha).argmax(-1),
        "logistic regression": logistic_regression(x, y, xq, num_states).state,
        "linear regression": linear_regression_classifier(x, y, xq, num_states).state,
        "linear SVM": linear_svm(x, y, xq, num_states).state,
        "3-NN": k_nearest_neighbors(x, y, xq, num_states, k=min(3, k)).state,
    }
    for size, model in models.items():
        pred = _chunked(model, batch.x[:, :, :k], batch.y[:, :, :k], batch.x_query)
        out[_tf(size)] = pred.round().clamp(0, num_states - 1).long()
    return out


def _tf(size: str) -> str:
    return f"transformer ({size})"


def _fmt_ci(m: float, lo: float, hi: float) -> str:
    return f"{m:.4f} [{lo:.4f}, {hi:.4f}]"


def _paired(diff: torch.Tensor) -> tuple[float, float, list[float]]:
    """Mean, standard error and per-seed means of paired per-prompt differences (E, B): the SE
    is the larger of the seed spread and the prompt noise (:func:`standard_error`)."""
    per_seed = diff.double().mean(-1)
    prompt_se = (diff.double().std(-1) / math.sqrt(diff.shape[-1])).tolist()
    return float(per_seed.mean()), standard_error(per_seed.tolist(), prompt_se), per_seed.tolist()


def above_learner_evidence(
    size: str, learner: str, vs_learner: tuple[float, float], vs_bayes: tuple[float, float]
) -> str | None:
    """Evidence that "the transformer ≈ the best classic learner" fails *upwards* soundly.

    Only a transformer at the Bayes ceiling qualifies (paired difference to the Bayes predictor
    within 3 SE): no predictor can do better, so its lead over the learner is not an artefact of
    training. ``vs_learner``/``vs_bayes``: paired (mean, SE) of transformer − learner/Bayes."""
    (dm, dse), (bm, bse) = vs_learner, vs_bayes
    if dm <= 0 or abs(bm) > 3 * bse:
        return None
    return (
        f"the {size} transformer is at the Bayes ceiling (paired transformer − Bayes {bm:+.4f} "
        f"± {bse:.2g}, within 3 SE), the best any predictor can do, and above {learner} by "
        f"{dm:+.4f} ± {dse:.2g}: it is better than the classic learners, not ≈ them"
    )


def _ceiling_check(
    quantity: str, values: list[float], theory: float, diff: torch.Tensor, note: str
):
    """An identity row: nothing beats the Bayes predictor beyond 3 SE of the paired difference."""
    m, se, _ = _paired(diff)
    ok = m <= 3 * se
    mean, std = mean_std(values)
    return ReportRow(
        quantity, theory, None, mean, std, len(values),
        f"paired (model − Bayes) {m:+.4f} ≤ 3·SE({se:.2g}) = {3 * se:.3g} (identity: the Bayes "
        "predictor is optimal)",
        "check" if ok else "fail", note,
    )  # fmt: skip


#: the paper's Fig. 6 statements per size and the accuracy tolerance around the best classic
#: learner that still reads as "≈" (small, standard) or "slightly worse" (tiny)
PAPER_D = {
    "tiny": ("slightly worse than SVM ≈ logistic regression; better than 3-NN", 0.05),
    "small": ("≈ SVM ≈ logistic regression; better than 3-NN", 0.02),
    "standard": ("≈ SVM ≈ logistic regression; better than 3-NN", 0.02),
}


def analyze_d(
    runs: Mapping[str, TrainResult], budget: TransformerBudget, figures: Path
) -> tuple[list[ReportRow], list[str]]:
    """(d) from finished run folders: accuracy vs number of in-context chains; see the module
    docstring."""
    ks = _check_context_sizes(budget)
    S = budget.states
    results = {size: runs[_d_name(budget, size)] for size in budget.sizes}
    first = next(iter(results.values()))
    test = first.task.sample(budget.test_size, EVAL_PURPOSE, 0)
    models = {size: r.model for size, r in results.items()}
    per_k = [_method_states(models, test, k, S) for k in ks]
    methods = list(per_k[0])
    y = test.y_query.round().long()
    correct = torch.stack(
        [torch.stack([(p[m] == y).double() for p in per_k]) for m in methods]
    ).cpu()  # (M, K, E, B)
    M, K, E, B = correct.shape
    mean, lo, hi = bootstrap_ci(correct.reshape(M, K, E * B), budget.resamples)
    per_seed = correct.mean(-1)  # (M, K, E)
    idx = {m: i for i, m in enumerate(methods)}

    def ci(m: str, j: int = -1) -> tuple[float, float, float]:
        i = idx[m]
        return float(mean[i, j]), float(lo[i, j]), float(hi[i, j])

    # ------------------------------------------------------------------ figure
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, m in enumerate(methods):
        style = dict(ls="--", color="k") if m == BAYES else dict(color=f"C{i}")
        ax.plot(ks, mean[i].numpy(), marker="o", ms=3, label=m, **style)
        ax.fill_between(ks, lo[i].numpy(), hi[i].numpy(), alpha=0.15, color=style["color"])
    ax.set_xscale("log")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel("in-context chains k")
    ax.set_ylabel("accuracy  P(ŷ rounded = y_q)")
    ax.set_title(
        f"|S| = {S}, d = {budget.d}, trained with n = {budget.n_train}: bootstrap 95% bands\n"
        f"over {E * B} test prompts pooled over {E} seeds",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    save_figure(fig, figures / "d_accuracy_vs_context.png")

    # ------------------------------------------------------------------ rows
    kmax = ks[-1]
    rows: list[ReportRow] = []
    b_m = ci(BAYES)[0]
    best = max(BASELINES, key=lambda m: ci(m)[0])
    knn = "3-NN"
    others = ", ".join(f"{m} {ci(m)[0]:.4f}" for m in BASELINES)
    for size in budget.sizes:
        name = _tf(size)
        acc = per_seed[idx[name], -1].tolist()
        t = correct[idx[name], -1]  # (E, B)
        paper, tol = PAPER_D.get(size, PAPER_D["standard"])
        rows.append(
            _ceiling_check(
                f"(d) {size} softmax transformer, k={kmax} chains, |S|={S}: accuracy ≤ the Bayes "
                "posterior mode's",
                acc, b_m, t - correct[idx[BAYES], -1],
                f"transformer {_fmt_ci(*ci(name))}, Bayes {_fmt_ci(*ci(BAYES))} (95% bootstrap, "
                "prompts pooled over seeds)",
            )
        )  # fmt: skip
        dm, dse, _ = _paired(t - correct[idx[best], -1])
        bm, bse, _ = _paired(t - correct[idx[BAYES], -1])
        evidence = above_learner_evidence(size, best, (dm, dse), (bm, bse))
        rows.append(
            compare(
                f"(d) {size} softmax transformer vs the best classic learner ({best}) at "
                f"k={kmax}, |S|={S}",
                acc, ci(best)[0], "≈", Tolerance(k=3, abs=tol), se=dse, paper=paper,
                note=f"paired transformer − {best} {dm:+.4f} ± {dse:.2g} (SE); baselines: "
                f"{others}; Bayes {b_m:.4f}; tolerance {tol:g} = how far from the best learner "
                f"the paper's statement for the {size} size allows",
                evidence=evidence,
            )
        )  # fmt: skip
        km, kse, kseed = _paired(t - correct[idx[knn], -1])
        rows.append(
            claim(
                f"(d) {size} softmax transformer beats 3-NN at k={kmax}, |S|={S}",
                acc, km > 3 * kse,
                f"paired (transformer − 3-NN) {km:+.4f} > 3·SE({kse:.2g}) = {3 * kse:.3g}",
                theory=ci(knn)[0], paper="all transformers better than 3-NN",
                note=f"3-NN {_fmt_ci(*ci(knn))}; per-seed differences "
                f"{[round(v, 4) for v in kseed]}",
            )
        )  # fmt: skip

    # ------------------------------------------------------------------ section
    header = "| method | " + " | ".join(f"k={k}" for k in ks) + " |"
    table = [header, "|---|" + "---|" * len(ks)]
    for m in methods:
        cells = " | ".join(
            f"{ci(m, j)[0]:.3f} ± {(ci(m, j)[2] - ci(m, j)[1]) / 2:.3f}" for j in range(K)
        )
        table.append(f"| {m} | {cells} |")
    steps = {size: r.config.train.steps for size, r in results.items()}
    section = "\n".join(
        [
            "## (d) Softmax transformers vs classic learners and the Bayes ceiling",
            "",
            f"Softmax transformers ({', '.join(f'{s}: {steps[s]} steps' for s in steps)}, "
            f"batch {budget.batch_size}, Adam lr {budget.lr:g} with cosine decay, {E} seeds) "
            f"trained with the square loss on |S| = {S}-state Markov prompts (d = {budget.d}, "
            f"n = {budget.n_train} chains; kernel rows Dirichlet(1) — p01, p10 ~ U(0, 1) for "
            "binary chains — and a uniform first state independent of the kernel, so the "
            "closed-form Bayes posterior mode is the exact ceiling). Evaluated on "
            f"{B} fresh prompts per seed cut to their first k chains; a prediction is correct "
            "when rounded and clipped to a state it equals y_q. Baselines are fitted per prompt "
            "on its k chains (x = s_1..s_d); k-NN uses min(3, k) neighbours. Accuracy ± "
            "half-width of the 95% percentile-bootstrap interval over test prompts pooled over "
            "seeds:",
            "",
            *table,
            "",
            "![](figures/d_accuracy_vs_context.png)",
        ]
    )
    return rows, [section]


def part_d(
    out: Path, budget: TransformerBudget, device: str = "auto", progress: bool = True
) -> tuple[list[ReportRow], list[str]]:
    """Train (or resume) the runs of (d) under ``out/runs`` and analyse them."""
    train_runs(runs_d(budget, device), out / "runs", progress=progress)
    return analyze_d(RunSet(out / "runs", device), budget, out / "figures")


# ------------------------------------------------------------------------------ part (e)
def transition_similarity(
    x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor, num_states: int
) -> torch.Tensor:
    """Cosine similarity (E, B, n) of each context chain's transition counts with the query's.

    Chain i's counts ``c_i[a, b]`` run over its d transitions ``s_1 → … → s_{d+1}`` (``x_i``
    then ``y_i``), the query's over its d − 1 observed transitions (``x_q``; its next state is
    hidden). Counts are non-negative, so the similarity is in [0, 1]; it is rounded to 1e-9 so
    that equal directions tie exactly (for rank correlations). Needs d ≥ 2.
    """
    if x_query.shape[-1] < 2:
        raise ValueError("x_query: need d >= 2 (the query has no observed transition otherwise)")
    S = num_states
    chains = torch.cat([x, y.unsqueeze(-1)], dim=-1).round().long()  # (E, B, n, d+1)
    q = x_query.round().long()  # (E, B, d)
    pairs_c = chains[..., :-1] * S + chains[..., 1:]
    pairs_q = q[..., :-1] * S + q[..., 1:]
    c = torch.nn.functional.one_hot(pairs_c, S * S).sum(-2).double()  # (E, B, n, S²)
    cq = torch.nn.functional.one_hot(pairs_q, S * S).sum(-2).double()  # (E, B, S²)
    dot = (c * cq.unsqueeze(-2)).sum(-1)
    cos = dot / (c.norm(dim=-1) * cq.norm(dim=-1, keepdim=True))
    return torch.round(cos * 1e9) / 1e9


def query_attention(maps: list[torch.Tensor], n: int) -> torch.Tensor:
    """(L, E, B, n): each layer's attention from the query (last row) to the n context chains,
    averaged over heads, from :meth:`SoftmaxTransformer.attention_maps` output."""
    return torch.stack([m[..., -1, :n].mean(-2) for m in maps])


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks over the last dim, ties get their average rank (batched, O(n²))."""
    less = (v.unsqueeze(-1) > v.unsqueeze(-2)).sum(-1)
    equal = (v.unsqueeze(-1) == v.unsqueeze(-2)).sum(-1)
    return less.double() + (equal.double() + 1) / 2


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation over the last dim (average ranks for ties); NaN where a or b is
    constant."""
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    den = ra.norm(dim=-1) * rb.norm(dim=-1)
    num = (ra * rb).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


@dataclass(frozen=True)
class AttentionSimilarity:
    """Per-prompt summaries (…,) of the query's attention to its context chains.

    same / different: mean attention to chains that use / do not use the query's kernel (NaN
    where the prompt has no such chain); gap = same − different; spearman: within-prompt rank
    correlation of attention with the similarity (NaN where either is constant).
    """

    same: torch.Tensor
    different: torch.Tensor
    gap: torch.Tensor
    spearman: torch.Tensor


def attention_similarity(
    attention: torch.Tensor, same_kernel: torch.Tensor, similarity: torch.Tensor
) -> AttentionSimilarity:
    """Relate attention (…, n) to same-kernel flags (…, n) bool and a similarity (…, n)."""
    att = attention.double()
    s = same_kernel.bool()
    n_same = s.sum(-1)
    n_diff = (~s).sum(-1)
    nan = torch.full(att.shape[:-1], math.nan, dtype=torch.float64, device=att.device)
    same = torch.where(n_same > 0, (att * s).sum(-1) / n_same.clamp_min(1), nan)
    diff = torch.where(n_diff > 0, (att * ~s).sum(-1) / n_diff.clamp_min(1), nan)
    return AttentionSimilarity(same, diff, same - diff, rank_correlation(att, similarity.double()))


def _mean_se(v: torch.Tensor) -> tuple[float, float, int]:
    """Mean, standard error and count of the finite entries of v."""
    f = v[torch.isfinite(v)]
    if f.numel() == 0:
        return math.nan, math.nan, 0
    se = float(f.std() / math.sqrt(f.numel())) if f.numel() > 1 else math.nan
    return float(f.mean()), se, f.numel()


def _nanmean_per_seed(v: torch.Tensor) -> list[float]:
    """(E, B) -> per-seed mean over the finite entries."""
    ok = torch.isfinite(v)
    return (torch.where(ok, v, 0).sum(-1) / ok.sum(-1).clamp_min(1)).tolist()


def _binned(values: torch.Tensor, keys: torch.Tensor, edges: torch.Tensor):
    """Mean and standard error of ``values`` per bin of ``keys`` (flattened); NaN for bins with
    fewer than 2 entries."""
    v, kk = values.flatten().double(), keys.flatten().double()
    nb = edges.numel() - 1
    b = (torch.bucketize(kk, edges[1:-1], right=True)).clamp(0, nb - 1)
    cnt = torch.zeros(nb, dtype=torch.float64).scatter_add_(0, b, torch.ones_like(v))
    s1 = torch.zeros(nb, dtype=torch.float64).scatter_add_(0, b, v)
    s2 = torch.zeros(nb, dtype=torch.float64).scatter_add_(0, b, v * v)
    mean = s1 / cnt.clamp_min(1)
    var = (s2 - cnt * mean**2).clamp_min(0) / (cnt - 1).clamp_min(1)
    se = (var / cnt.clamp_min(1)).sqrt()
    bad = cnt < 2
    return mean.masked_fill(bad, math.nan), se.masked_fill(bad, math.nan), cnt


def analyze_e(
    runs: Mapping[str, TrainResult], budget: TransformerBudget, figures: Path
) -> tuple[list[ReportRow], list[str]]:
    """(e) from the finished run folder: attention from the query vs sequence similarity; see
    the module docstring."""
    n, k, size = budget.mixture_n, budget.mixture, budget.mixture_size
    res = runs[_e_name(budget)]
    test = res.task.sample(budget.mixture_test_size, ATTENTION_PURPOSE, 0)
    model = res.model

    def attn(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        maps = model.attention_maps(x, y, xq)
        return query_attention(maps, n).permute(1, 2, 0, 3)  # (E, b, L, n)

    att = _chunked(attn, test.x, test.y, test.x_query).permute(2, 0, 1, 3).cpu()  # (L, E, B, n)
    L, E, B, _ = att.shape
    same = (test.assignments[..., :n] == test.assignments[..., n:]).cpu()  # (E, B, n)
    sim = transition_similarity(test.x, test.y, test.x_query, 2).cpu()  # (E, B, n)
    stats = [attention_similarity(att[layer], same, sim) for layer in range(L)]
    # the rows test the model's attention as a whole: averaged over layers and heads
    last = attention_similarity(att.mean(0), same, sim)

    # ------------------------------------------------------------------ rows
    g_m, g_se, g_n = _mean_se(last.gap)
    s_m = _mean_se(last.same)[0]
    d_m = _mean_se(last.different)[0]
    r_m, r_se, r_n = _mean_se(last.spearman)
    layer_gaps = ", ".join(f"L{i + 1} {_mean_se(s.gap)[0]:+.4g}" for i, s in enumerate(stats))
    layer_rho = ", ".join(f"L{i + 1} {_mean_se(s.spearman)[0]:+.3f}" for i, s in enumerate(stats))
    g_seed, r_seed = _nanmean_per_seed(last.gap), _nanmean_per_seed(last.spearman)
    g_se = max(g_se, standard_error(g_seed))  # seeds may disagree more than prompts do
    r_se = max(r_se, standard_error(r_seed))
    paper = "attention concentrates on chains similar to the query"
    rows = [
        claim(
            f"(e) {size} transformer, mixture of {k} kernels: attention from the query (mean over "
            "layers and heads), same-kernel minus different-kernel chains",
            g_seed, g_m > 3 * g_se,
            f"gap {g_m:+.4g} > 3·SE({g_se:.2g}) = {3 * g_se:.3g} (SE: the larger of the prompt "
            f"noise over {g_n} prompts with both kinds pooled over {E} seeds and the seed spread)",
            theory=0.0, paper=paper,
            note=f"same-kernel {s_m:.4f}, different-kernel {d_m:.4f} (uniform 1/(n+1) = "
            f"{1 / (n + 1):.4f}); per layer: {layer_gaps}; theory column: no preference",
        ),
        claim(
            f"(e) {size} transformer, mixture of {k} kernels: within-prompt Spearman correlation "
            "of attention (mean over layers and heads) with the transition-count cosine "
            "similarity",
            r_seed, r_m > 3 * r_se,
            f"mean ρ {r_m:+.3f} > 3·SE({r_se:.2g}) = {3 * r_se:.3g} (SE over {r_n} prompts, "
            f"constant-similarity prompts left out, pooled over {E} seeds, or the seed spread)",
            theory=0.0, paper=paper,
            note=f"per layer: {layer_rho}; theory column: no correlation",
        ),
    ]  # fmt: skip

    # ------------------------------------------------------------------ figures
    figs = figures
    edges = torch.linspace(0, 1, 9, dtype=torch.float64)
    centers = ((edges[:-1] + edges[1:]) / 2).numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for layer in range(L):
        mean, se, _ = _binned(att[layer], sim, edges)
        m, s = mean.numpy(), se.numpy()
        ax1.plot(centers, m, marker="o", ms=3, color=f"C{layer}", label=f"layer {layer + 1}")
        ax1.fill_between(centers, m - 1.96 * s, m + 1.96 * s, color=f"C{layer}", alpha=0.2)
    ax1.axhline(1 / (n + 1), color="gray", ls=":", lw=1, label="uniform 1/(n+1)")
    ax1.set_xlabel("cosine similarity of transition counts (chain vs query)")
    ax1.set_ylabel("attention from the query (mean over heads)")
    ax1.set_title("binned means ± 1.96 SE", fontsize=9)
    ax1.legend(fontsize=7)
    gaps = [_mean_se(s.gap) for s in stats]
    pos = np.arange(1, L + 1)
    ax2.bar(
        pos,
        [g[0] for g in gaps],
        0.6,
        yerr=[1.96 * g[1] for g in gaps],
        color=[f"C{i}" for i in range(L)],
        capsize=4,
    )
    ax2.axhline(0, color="k", lw=0.8)
    ticks = [
        f"layer {i + 1}\nsame {_mean_se(s.same)[0]:.4f}\ndiff. {_mean_se(s.different)[0]:.4f}"
        for i, s in enumerate(stats)
    ]
    ax2.set_xticks(pos, ticks, fontsize=7)
    ax2.set_ylabel("same-kernel − different-kernel attention")
    ax2.set_title("attention gap per prompt, mean ± 1.96 SE", fontsize=9)
    fig.suptitle(
        f"{size} transformer, {k}-kernel mixture prompts (d = {budget.d}, n = {n}), "
        f"{E * B} test prompts pooled over {E} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, figs / "e_attention_vs_similarity.png")

    # example: the first prompt of seed 0 whose context uses both kernels
    both = (same[0].any(-1) & (~same[0]).any(-1)).nonzero()
    p = int(both[0]) if both.numel() else 0
    with torch.no_grad():
        maps = model.attention_maps(
            test.x[:, p : p + 1], test.y[:, p : p + 1], test.x_query[:, p : p + 1]
        )
    kern = test.assignments[0, p].tolist()
    labels = [f"{i + 1}·K{kern[i]}" for i in range(n)] + [f"q·K{kern[n]}"]
    fig, axes = plt.subplots(1, L + 1, figsize=(3.4 * (L + 1), 3.4))
    for layer, ax in enumerate(axes[:L]):
        a = maps[layer][0, 0].mean(0).cpu().numpy()
        im = ax.imshow(a, cmap="viridis", vmin=0)
        ax.set_xticks(range(n + 1), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(n + 1), labels, fontsize=6)
        ax.set_title(f"layer {layer + 1} (mean over heads)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax = axes[L]
    colors = ["C0" if s else "C1" for s in same[0, p].tolist()]
    ax.bar(range(n), att[-1, 0, p].numpy(), color=colors)
    for i, s in enumerate(sim[0, p].tolist()):
        ax.text(i, 0, f"{s:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(n), [str(i + 1) for i in range(n)], fontsize=6)
    ax.set_title("last layer, query row: blue same kernel,\norange other; text: cosine", fontsize=8)
    fig.tight_layout()
    save_figure(fig, figs / "e_attention_map.png")

    # ------------------------------------------------------------------ section
    table = [
        "| layer | same kernel | different kernel | gap ± SE | Spearman ρ ± SE |",
        "|---|---|---|---|---|",
    ]
    for i, s in enumerate(stats):
        gm, gse, _ = _mean_se(s.gap)
        rm, rse, _ = _mean_se(s.spearman)
        table.append(
            f"| {i + 1} | {_mean_se(s.same)[0]:.4f} | {_mean_se(s.different)[0]:.4f} | "
            f"{gm:+.4g} ± {gse:.2g} | {rm:+.3f} ± {rse:.2g} |"
        )
    section = "\n".join(
        [
            "## (e) Attention vs sequence similarity",
            "",
            f"A {size} softmax transformer ({res.config.train.steps} steps, {E} seeds) trained "
            f"on binary prompts whose chains each use one of {k} U(0, 1) kernels (d = "
            f"{budget.d}, n = {n}). On {B} fresh prompts per seed: the query's attention to "
            "each context chain (mean over heads) against (i) whether the chain uses the "
            "query's kernel and (ii) the cosine similarity of the chain's and the query's "
            "transition-count vectors (the kernel's sufficient statistics; the query's d − 1 "
            "observed transitions). ρ is the within-prompt Spearman correlation (prompts with "
            "constant similarity left out); SEs over prompts pooled over seeds.",
            "",
            *table,
            "",
            "![](figures/e_attention_vs_similarity.png)",
            "",
            "![](figures/e_attention_map.png)",
        ]
    )
    return rows, [section]


def part_e(
    out: Path, budget: TransformerBudget, device: str = "auto", progress: bool = True
) -> tuple[list[ReportRow], list[str]]:
    """Train (or resume) the run of (e) under ``out/runs`` and analyse it."""
    train_runs(runs_e(budget, device), out / "runs", progress=progress)
    return analyze_e(RunSet(out / "runs", device), budget, out / "figures")
