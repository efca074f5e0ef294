"""benchmarks/bn_stats_check.py: recomputing BatchNorm running statistics (a diagnostic for trained runs)."""
import torch

from benchmarks.bn_stats_check import batch_norms, recompute_bn_stats, table


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_recomputed_statistics_are_the_average_over_the_batches_and_nothing_else_changes():
    model = _model().eval()
    bn = model[1]
    bn.running_mean.fill_(50.0)  # stale statistics, as if the features had drifted since
    bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 3) * (i + 1) + i for i in range(3)]
    seen = recompute_bn_stats(model, model, batches)
    assert seen == 3
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    # momentum=None: a cumulative average of the per-batch mean and unbiased variance (equal batch sizes)
    assert torch.allclose(bn.running_mean, torch.stack([f.mean(0) for f in feats]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0), atol=1e-4)
    assert not model.training and bn.momentum == 0.1  # mode and momentum restored
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_one_batch_makes_eval_mode_match_train_mode_normalisation():
    model = _model()
    model[1].running_mean.fill_(-20.0)
    x = torch.randn(64, 3)
    with torch.no_grad():
        model.eval()
        stale = model(x)
        recompute_bn_stats(model, model, [x])
        model.eval()
        fresh = model(x)
        model.train()
        train_mode = model(x)
    assert not torch.allclose(stale, train_mode, atol=1e-2)
    # eval uses the unbiased variance (n/(n-1)), train mode the biased one: equal up to that factor
    assert torch.allclose(fresh, train_mode, atol=5e-2)


def test_a_model_without_batchnorm_has_nothing_to_recompute_and_the_table_says_so():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    assert batch_norms(model) == []
    text = table([{"run": "runs/x", "bn_layers": 0, "AP": 1.0, "AP75": 0.5},
                  {"run": "runs/y", "bn_layers": 2, "AP": 10.0, "AP75": 5.0, "AP_bn_recomputed": 12.5,
                   "AP75_bn_recomputed": 6.0}], "test")
    assert "(no BatchNorm)" in text and "+2.50" in text
