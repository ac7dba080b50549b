"""Ding et al. (2025) parts (d) and (e) on a tiny budget, the attention-vs-similarity helpers on
hand-built cases, and the bootstrap interval of :mod:`iclab.analysis.metrics`."""

import math
import re

import pytest
import torch
from report_contract import ROW_KEYS as KEYS

from iclab.analysis.metrics import bootstrap_ci
from iclab.experiments.ding2025_transformers import (
    BASELINES,
    TransformerBudget,
    attention_similarity,
    part_d,
    part_e,
    query_attention,
    rank_correlation,
    runs_d,
    transition_similarity,
)

TINY = TransformerBudget(
    seeds=2,
    sizes=("tiny", "small"),
    steps=6,
    batch_size=16,
    test_size=64,
    context_sizes=(1, 3, 6),
    n_train=6,
    warmup_steps=1,
    eval_every=3,
    checkpoint_every=3,
    train_test_size=32,
    resamples=200,
    mixture_n=5,
    mixture_steps=6,
    mixture_test_size=64,
)


def _check_rows(rows, count):
    assert len(rows) == count
    for r in rows:
        row = r.as_json()
        assert set(row) == KEYS
        assert row["verdict"] in {"pass", "fail", "refuted", "check"} and row["threshold"]
        assert row["n_seeds"] == TINY.seeds
        assert math.isfinite(row["trained_mean"]) and row["note"]


def test_parts_d_and_e_end_to_end_and_resume(tmp_path):
    rows_d, sec_d = part_d(tmp_path, TINY, device="cpu", progress=False)
    _check_rows(rows_d, 3 * len(TINY.sizes))
    for r in rows_d:
        assert 0.0 <= r.trained_mean <= 1.0 and 0.0 <= r.theory <= 1.0
    ceiling, versus_best, versus_knn = rows_d[0::3], rows_d[1::3], rows_d[2::3]
    # the Bayes ceiling is an identity (check); the comparisons are claims with the paper's words
    for r in ceiling:
        assert "Bayes" in r.quantity and r.verdict in {"check", "fail"} and r.paper is None
        m = float(re.search(r"paired \(model − Bayes\) ([-+0-9.]+) ≤", r.threshold).group(1))
        se3 = float(re.search(r"= ([0-9.e-]+) \(identity", r.threshold).group(1))
        assert (r.verdict == "check") == (m <= se3 + 1e-4)
    assert all(any(b in r.quantity for b in BASELINES) and r.paper for r in versus_best)
    assert all("3-NN" in r.quantity and "3·SE" in r.threshold for r in versus_knn)
    assert "d_accuracy_vs_context.png" in sec_d[0] and "| method |" in sec_d[0]

    rows_e, sec_e = part_e(tmp_path, TINY, device="cpu", progress=False)
    _check_rows(rows_e, 2)
    assert all(r.theory == 0.0 and r.paper for r in rows_e)
    assert "same-kernel" in rows_e[0].note and "ρ" in rows_e[1].threshold
    assert "e_attention_map.png" in sec_e[0]

    figs = tmp_path / "figures"
    for name in ("d_accuracy_vs_context", "e_attention_vs_similarity", "e_attention_map"):
        data = (figs / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["d_small_S2", "d_tiny_S2", "e_mixture2_tiny"]

    # the analysis reads the folders only: a second call trains nothing and gives the same rows
    again_d, _ = part_d(tmp_path, TINY, device="cpu", progress=False)
    again_e, _ = part_e(tmp_path, TINY, device="cpu", progress=False)
    assert again_d == rows_d and again_e == rows_e
    assert runs_d(TINY, "cpu")[0].config.train.steps == TINY.steps


def test_context_sizes_validated(tmp_path):
    bad = TransformerBudget(**{**TINY.__dict__, "context_sizes": (1, 7)})
    with pytest.raises(ValueError, match="context_sizes"):
        part_d(tmp_path, bad, device="cpu", progress=False)


def test_transition_similarity_hand_built():
    # query x_q = 0 0 1 1: transitions 0→0, 0→1, 1→1 -> counts (00, 01, 10, 11) = (1, 1, 0, 1)
    xq = torch.tensor([[[0.0, 0, 1, 1]]])
    x = torch.tensor([[[[0.0, 0, 1, 1], [1.0, 0, 1, 0], [0.0, 0, 0, 0]]]])
    y = torch.tensor([[[1.0, 1.0, 0.0]]])
    sim = transition_similarity(x, y, xq, 2)
    # chain 1: 0 0 1 1 1 -> (1, 1, 0, 2); chain 2: 1 0 1 0 1 -> (0, 2, 2, 0); chain 3: (4, 0, 0, 0)
    q = torch.tensor([1.0, 1, 0, 1], dtype=torch.float64)
    chains = torch.tensor([[1.0, 1, 0, 2], [0, 2, 2, 0], [4, 0, 0, 0]], dtype=torch.float64)
    expected = chains @ q / (chains.norm(dim=-1) * q.norm())
    assert sim.shape == (1, 1, 3)
    torch.testing.assert_close(sim[0, 0], expected, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="d >= 2"):
        transition_similarity(x[..., :1], y, xq[..., :1], 2)


def test_attention_similarity_hand_built():
    att = torch.tensor([[0.4, 0.3, 0.1, 0.2], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    same = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.5, 0.5, 0.5, 0.5], [0.0, 0.1, 0.1, 0.3]])
    st = attention_similarity(att, same, sim)
    torch.testing.assert_close(st.same[:2], torch.tensor([0.35, 0.25], dtype=torch.float64))
    torch.testing.assert_close(st.different[:2], torch.tensor([0.15, 0.25], dtype=torch.float64))
    torch.testing.assert_close(st.gap[:2], torch.tensor([0.2, 0.0], dtype=torch.float64))
    assert math.isnan(st.different[2]) and math.isnan(st.gap[2])  # no different-kernel chain
    # prompt 0: attention ranks (4, 3, 1, 2) vs similarity ranks (4, 3, 1, 2): ρ = 1
    assert st.spearman[0].item() == pytest.approx(1.0)
    assert math.isnan(st.spearman[1])  # constant attention and similarity
    # prompt 2: ranks (1, 2, 3, 4) vs tied similarity ranks (1, 2.5, 2.5, 4)
    ra, rb = torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 2.5, 2.5, 4])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    assert st.spearman[2].item() == pytest.approx(float(ra @ rb / (ra.norm() * rb.norm())))
    # reversing one side flips the sign
    assert rank_correlation(att[0], -sim[0]).item() == pytest.approx(-1.0)


def test_query_attention_takes_the_query_row_mean_over_heads():
    E, B, H, n = 1, 2, 3, 4
    maps = [torch.rand(E, B, H, n + 1, n + 1) for _ in range(2)]
    qa = query_attention(maps, n)
    assert qa.shape == (2, E, B, n)
    torch.testing.assert_close(qa[1], maps[1][..., -1, :n].mean(-2))


def test_bootstrap_ci_deterministic_batched_and_covers():
    v = torch.bernoulli(torch.full((500,), 0.3), generator=torch.Generator().manual_seed(1))
    m, lo, hi = bootstrap_ci(v, resamples=500, seed=3)
    assert float(m) == pytest.approx(float(v.mean()))
    assert lo < m < hi
    assert [float(t) for t in bootstrap_ci(v, 500, seed=3)] == [float(m), float(lo), float(hi)]
    assert float(bootstrap_ci(v, 500, seed=4)[1]) != float(lo)
    # the half-width is close to the normal approximation 1.96·sqrt(p(1-p)/n)
    half = (float(hi) - float(lo)) / 2
    assert half == pytest.approx(1.96 * math.sqrt(0.3 * 0.7 / 500), rel=0.15)
    # batched over leading dims: each row equals the 1-D call (same resample indices)
    batch = torch.stack([v, 1 - v])
    bm, blo, bhi = bootstrap_ci(batch, 500, seed=3)
    assert bm.shape == blo.shape == (2,)
    torch.testing.assert_close(blo[0], lo)
    torch.testing.assert_close(bhi[0], hi)
    torch.testing.assert_close(blo[1], 1 - hi)
    # coverage sanity: 200 Bernoulli(0.3) samples of size 100, the 95% interval covers 0.3 in
    # roughly 95% of them (binomial sd of the rate ≈ 1.5%; percentile intervals run a bit low)
    g = torch.Generator().manual_seed(0)
    data = torch.bernoulli(torch.full((200, 100), 0.3), generator=g)
    _, lo, hi = bootstrap_ci(data, 400, seed=0)
    coverage = ((lo <= 0.3) & (hi >= 0.3)).double().mean().item()
    assert 0.88 <= coverage <= 0.99
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(v, level=1.0)
    with pytest.raises(ValueError, match="observation"):
        bootstrap_ci(torch.zeros(0))


def test_better_than_the_learner_is_refuted_only_at_the_bayes_ceiling():
    from iclab.experiments.ding2025_transformers import above_learner_evidence

    # full budget, standard size: +0.0348 ± 0.004 over logistic regression, at Bayes
    ev = above_learner_evidence("standard", "logistic regression", (0.0348, 0.004), (0.0003, 0.004))
    assert ev is not None and "Bayes ceiling" in ev
    # below the ceiling the lead could shrink or grow with training: no refutation
    assert above_learner_evidence("standard", "lr", (0.0348, 0.004), (-0.02, 0.004)) is None
    # worse than the learner is never "better than the learners"
    assert above_learner_evidence("standard", "lr", (-0.05, 0.004), (0.0, 0.004)) is None
