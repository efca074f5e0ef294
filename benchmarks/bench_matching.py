"""Micro-benchmark of Hungarian matching: our batched matcher vs a per-image loop vs transformers' matcher.

    python -m benchmarks.bench_matching [THREADS]       # B=16, L=6, N=300, T=300 and T=20 on the CPU
    from benchmarks.bench_matching import benchmark_matching
    benchmark_matching(B=16, L=6, N=300, T=20, device="cuda")
"""
from __future__ import annotations

import statistics
import time

import torch
from scipy.optimize import linear_sum_assignment

from detrdistill.ops.matcher import HungarianMatcher, linear_assignment, pad_targets


def _timed(fn, repeats: int, warmup: int, device: torch.device) -> tuple[float, object]:
    """Median wall time of ``fn()`` in ms (CUDA synchronised) and its last result.

    The median CPU time of this process (all threads) is appended to ``_timed.cpu_ms`` (useful on a shared machine).
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = None
    for _ in range(warmup):
        out = fn()
    times, cpu = [], []
    for _ in range(repeats):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    _timed.cpu_ms.append(statistics.median(cpu))
    return statistics.median(times), out


_timed.cpu_ms = []


def _total_cost(cost: torch.Tensor, assign: torch.Tensor) -> float:
    """cost [K, N, M], assign [K, N] -> summed cost of the matched pairs."""
    m = assign >= 0
    return float(cost.gather(2, assign.clamp(min=0)[..., None]).squeeze(2)[m].double().sum())


def benchmark_matching(B: int = 16, L: int = 6, N: int = 300, T: int = 300, device: str | torch.device = "cpu",
                       C: int = 80, repeats: int = 3, warmup: int = 1, seed: int = 0,
                       num_threads: int | None = None) -> dict:
    """Time matching all L stages of a batch of B images (N queries, T targets each, C classes).

    Returns a dict of median wall-clock milliseconds per full (L stages x B images) matching (and, under
    ``cpu_ms``, the median process CPU time of each, all threads):
      ``ours_batched``     :class:`HungarianMatcher` (one padded cost tensor + :func:`linear_assignment`);
      ``ours_cost_only``   just its cost tensor (no solver);
      ``lsa_only``         scipy ``linear_sum_assignment`` alone on the L*B precomputed cost matrices (the floor);
      ``per_image_scipy``  a Python loop over stages and images: per-image cost (same formula) + scipy;
      ``transformers``     ``DeformableDetrHungarianMatcher`` called once per stage (None if it cannot be imported);
    plus ``same_total_cost`` (ours vs transformers, all stages, rel. diff < 1e-6), ``same_assignment`` and the
    settings.  ``num_threads`` temporarily sets torch's intra-op threads (1 gives stable numbers on a shared CPU).
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _benchmark(B, L, N, T, device, C, repeats, warmup, seed)
    finally:
        torch.set_num_threads(old_threads)


def _benchmark(B: int, L: int, N: int, T: int, device, C: int, repeats: int, warmup: int, seed: int) -> dict:
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(L, B, N, C, generator=g).to(device)
    boxes = (torch.rand(L, B, N, 4, generator=g) * 0.5 + 0.25).to(device)
    targets = [{"class_labels": torch.randint(0, C, (T,), generator=g).to(device),
                "boxes": (torch.rand(T, 4, generator=g) * 0.5 + 0.25).to(device)} for _ in range(B)]
    matcher = HungarianMatcher()
    res: dict = {"B": B, "L": L, "N": N, "T": T, "C": C, "device": str(device), "repeats": repeats,
                 "torch_threads": torch.get_num_threads()}

    res["ours_batched"], ours = _timed(lambda: matcher(logits, boxes, targets), repeats, warmup, device)
    labels, tboxes, valid = pad_targets(targets, device)
    res["ours_cost_only"], cost = _timed(lambda: matcher.cost_matrix(logits, boxes, labels, tboxes),
                                         repeats, warmup, device)
    cost_np = cost.reshape(L * B, N, -1).double().cpu().numpy()
    res["lsa_only"], _ = _timed(lambda: [linear_sum_assignment(c) for c in cost_np], repeats, warmup, device)

    def per_image():
        out = []
        for l in range(L):
            for b in range(B):
                lab, tb = targets[b]["class_labels"][None], targets[b]["boxes"][None]
                c = matcher.cost_matrix(logits[l:l + 1, b:b + 1], boxes[l:l + 1, b:b + 1], lab, tb)[0, 0]
                out.append(linear_sum_assignment(c.cpu().numpy()))
        return out

    res["per_image_scipy"], _ = _timed(per_image, repeats, warmup, device)

    try:
        from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
    except Exception:  # noqa: BLE001 - transformers' loss needs optional vision deps
        res["transformers"], res["same_total_cost"] = None, None
        return res
    hf = DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    res["transformers"], hf_idx = _timed(
        lambda: [hf({"logits": logits[l], "pred_boxes": boxes[l]}, targets) for l in range(L)], repeats, warmup, device)
    hf_assign = torch.full((L, B, N), -1, dtype=torch.long)
    for l in range(L):
        for b, (i, j) in enumerate(hf_idx[l]):
            hf_assign[l, b, i] = j
    flat_cost = cost.reshape(L * B, N, -1).cpu()
    ours_total = _total_cost(flat_cost, ours.reshape(L * B, N).cpu())
    hf_total = _total_cost(flat_cost, hf_assign.reshape(L * B, N))
    res["cpu_ms"] = dict(zip(("ours_batched", "ours_cost_only", "lsa_only", "per_image_scipy", "transformers"),
                             _timed.cpu_ms[-5:]))
    res["same_total_cost"] = abs(ours_total - hf_total) <= 1e-6 * max(1.0, abs(hf_total))
    res["same_assignment"] = bool(torch.equal(ours.cpu(), hf_assign))
    return res


def _padded_vs_submatrix(K: int = 96, N: int = 300, T: int = 300, repeats: int = 3) -> dict:
    """Diagnostic: CPU cost of solving on each valid sub-matrix vs on the whole padded matrix (ms)."""
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(K, N, T, generator=g)
    counts = torch.randint(1, T + 1, (K,), generator=g)
    valid = torch.arange(T)[None] < counts[:, None]
    dev = torch.device("cpu")
    sub, _ = _timed(lambda: linear_assignment(cost, None, valid), repeats, 1, dev)
    full, _ = _timed(lambda: [linear_sum_assignment(c) for c in cost.double().numpy()], repeats, 1, dev)
    return {"submatrix_ms": sub, "full_padded_ms": full, "mean_T": float(counts.float().mean())}


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("threads", nargs="?", type=int, default=None, help="solver threads (default: the matcher's own)")
    args = p.parse_args()
    for t in (300, 20):
        print(json.dumps(benchmark_matching(T=t, num_threads=args.threads)))
