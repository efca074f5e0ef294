"""Tests of the exact batched assignment (detrdistill.ops.matcher.linear_assignment): against scipy's
linear_sum_assignment and brute force, with ties, masks, rectangular, empty and non-finite costs, the padded
GPU-solver path (driven by scipy), and the solver thread pool.
"""
from __future__ import annotations

import os

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detrdistill.ops import linear_assignment
from detrdistill.ops.matcher import _solve_cpu, _solve_padded
from tests.test_ops import brute_force_opt, check_valid_assignment, gen, scipy_opt, total_cost

# ------------------------------------------------------------------------------------------ linear assignment
@pytest.mark.parametrize("N,M", [(30, 30), (40, 7), (6, 25), (1, 9), (9, 1)])
def test_linear_assignment_matches_scipy_optimum(N, M):
    g = gen(N * 100 + M)
    cost = torch.randn(5, N, M, generator=g)
    assign = linear_assignment(cost)
    assert assign.shape == (5, N) and assign.dtype == torch.long
    for k in range(5):
        check_valid_assignment(assign[k], N, M)
        assert total_cost(cost[k], assign[k]) == pytest.approx(scipy_opt(cost[k]), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("N,M", [(20, 20), (25, 8), (8, 25)])
def test_linear_assignment_with_ties(N, M):
    cost = torch.randint(0, 3, (6, N, M), generator=gen(3)).float()
    assign = linear_assignment(cost)
    for k in range(6):
        check_valid_assignment(assign[k], N, M)
        assert total_cost(cost[k], assign[k]) == scipy_opt(cost[k])


def test_linear_assignment_matches_brute_force_on_tiny_problems():
    g = gen(4)
    for n, m in [(1, 1), (2, 3), (3, 2), (4, 4), (5, 3), (3, 5), (5, 5)]:
        for integer in (False, True):
            cost = torch.randint(0, 4, (4, n, m), generator=g).float() if integer else torch.rand(4, n, m, generator=g)
            assign = linear_assignment(cost)
            for k in range(4):
                check_valid_assignment(assign[k], n, m)
                assert total_cost(cost[k], assign[k]) == pytest.approx(brute_force_opt(cost[k]), abs=1e-6)


def test_linear_assignment_empty_problems():
    assert linear_assignment(torch.rand(3, 7, 0)).tolist() == [[-1] * 7] * 3
    assert linear_assignment(torch.rand(0, 7, 4)).shape == (0, 7)
    assert linear_assignment(torch.rand(2, 0, 4)).shape == (2, 0)
    out = linear_assignment(torch.rand(2, 7, 4), col_valid=torch.zeros(2, 4, dtype=torch.bool))
    assert (out == -1).all()
    out = linear_assignment(torch.rand(2, 7, 4), row_valid=torch.zeros(2, 7, dtype=torch.bool))
    assert (out == -1).all()


def test_linear_assignment_with_masks_equals_scipy_on_submatrix():
    g = gen(5)
    K, N, M = 12, 15, 11
    cost = torch.rand(K, N, M, generator=g)
    row_valid = torch.rand(K, N, generator=g) > 0.3
    col_valid = torch.rand(K, M, generator=g) > 0.4
    col_valid[0] = torch.arange(M) < 4  # a prefix
    row_valid[1] = False
    # garbage (even non-finite) in masked-out entries must not matter
    cost = torch.where(row_valid[:, :, None] & col_valid[:, None, :], cost, torch.tensor(float("nan")))
    assign = linear_assignment(cost, row_valid, col_valid)
    for k in range(K):
        check_valid_assignment(assign[k], int(row_valid[k].sum()), int(col_valid[k].sum()), row_valid[k], col_valid[k])
        sub = cost[k][row_valid[k]][:, col_valid[k]]
        assert total_cost(torch.nan_to_num(cost[k]), assign[k]) == pytest.approx(scipy_opt(sub), abs=1e-6)


def test_linear_assignment_non_finite_costs():
    cost = torch.tensor([[[float("inf"), 1.0, 2.0], [1.0, float("nan"), 5.0], [3.0, 1.0, float("-inf")]]])
    assign = linear_assignment(cost)
    check_valid_assignment(assign[0], 3, 3)
    # all-finite perfect matchings: (0->1, 1->2, 2->0) costs 9, (0->2, 1->0, 2->1) costs 4; the non-finite entries
    # (even -inf, which counts as invalid, not as a bonus) are avoided
    assert assign[0].tolist() == [2, 0, 1]
    # a row that is entirely non-finite still gets a column when it must
    cost = torch.tensor([[[float("nan"), float("nan")], [0.0, 1.0]]])
    assign = linear_assignment(cost)
    assert sorted(assign[0].tolist()) == [0, 1] and assign[0, 1].item() == 0
    # half precision input
    half = torch.rand(3, 6, 4, generator=gen(6)).to(torch.bfloat16)
    out = linear_assignment(half)
    for k in range(3):
        assert total_cost(half[k].float(), out[k]) == pytest.approx(scipy_opt(half[k].float()), abs=1e-6)


def _scipy_batch_solver(cost: torch.Tensor) -> torch.Tensor:
    """Stand-in for torch_linear_assignment.batch_linear_assignment: full problems, [K,N,M] -> [K,N] or -1."""
    out = torch.full(cost.shape[:2], -1, dtype=torch.long)
    for k, c in enumerate(cost):
        r, j = linear_sum_assignment(c.double().numpy())
        out[k, torch.as_tensor(r)] = torch.as_tensor(j)
    return out


@pytest.mark.parametrize("N,M,rows", [(20, 9, False), (20, 9, True), (6, 14, False), (10, 10, True)])
def test_padded_gpu_path_is_exact(N, M, rows):
    """The mask folding used with a batched (GPU) solver gives the same optimum as the sub-matrix path."""
    g = gen(7 + N + M)
    K = 10
    cost = torch.rand(K, N, M, generator=g) * 4 - 1
    cost[0, 0, 0] = float("inf")
    col_valid = torch.rand(K, M, generator=g) > 0.3
    col_valid[1] = False
    row_valid = (torch.rand(K, N, generator=g) > 0.3) if rows else None
    ref = _solve_cpu(cost, row_valid, col_valid)
    got = _solve_padded(cost, row_valid, col_valid, _scipy_batch_solver)
    big = torch.nan_to_num(cost, posinf=1e6)
    for k in range(K):
        nr = N if row_valid is None else int(row_valid[k].sum())
        check_valid_assignment(got[k], nr, int(col_valid[k].sum()),
                               None if row_valid is None else row_valid[k], col_valid[k])
        assert total_cost(big[k], got[k]) == pytest.approx(total_cost(big[k], ref[k]), abs=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_assignment_equals_serial_scipy(monkeypatch, threads):
    from detrdistill.ops import matcher as m

    monkeypatch.setattr(m, "PARALLEL_MIN_ENTRIES", 1)  # force the pool even on tiny batches
    m.set_assignment_threads(threads)
    try:
        g = torch.Generator().manual_seed(threads)
        cost = torch.rand(7, 9, 5, generator=g)
        cost[2] = cost[2].round(decimals=1)  # ties
        col_valid = torch.rand(7, 5, generator=g) > 0.3
        col_valid[4] = False  # an empty problem among the others
        assign = m.linear_assignment(cost, col_valid=col_valid)
        for k in range(7):
            cols = col_valid[k].nonzero().squeeze(1)
            matched = assign[k] >= 0
            assert int(matched.sum()) == len(cols)
            if len(cols):
                r, c = linear_sum_assignment(cost[k][:, cols].double().numpy())
                assert cost[k][matched, assign[k][matched]].sum().item() == pytest.approx(
                    cost[k][r, cols[c]].sum().item(), abs=1e-5)
    finally:
        m.set_assignment_threads(min(8, os.cpu_count() or 1))
    with pytest.raises(ValueError, match=">= 1"):
        m.set_assignment_threads(0)
