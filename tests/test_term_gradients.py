"""benchmarks/term_gradients.py: the per-term gradient / box-distribution diagnostic."""
import math

import pytest
import torch

from benchmarks.term_gradients import _distribution_stats, main


def test_distribution_stats_of_uniform_and_peaked_distributions():
    K = 33
    outer, ent = _distribution_stats(torch.zeros(2, 5, 4 * K))  # uniform over K bins
    assert outer == pytest.approx(2 / K) and ent == pytest.approx(math.log(K), rel=1e-5)
    peaked = torch.zeros(2, 5, 4, K)
    peaked[..., K // 2] = 50.0  # all mass on the middle bin
    outer, ent = _distribution_stats(peaked.reshape(2, 5, 4 * K))
    assert outer < 1e-6 and ent < 1e-6
    edges = torch.zeros(1, 1, 4, K)
    edges[..., 0] = edges[..., -1] = 50.0  # all mass on the outer bins
    assert _distribution_stats(edges.reshape(1, 1, 4 * K))[0] == pytest.approx(1.0)


def test_a_folder_without_checkpoints_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    assert "no checkpoint" in capsys.readouterr().err
