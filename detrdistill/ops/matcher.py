"""Exact batched bipartite matching for DETR-family set losses.

Shapes: K independent problems, N rows (queries), M columns (targets); L decoder stages, B images, N queries,
C classes (C + 1 logits for softmax/"ce" models, the last one "no-object"), T = the largest target count in the batch.

* :func:`linear_assignment` solves K rectangular assignment problems exactly (``[K, N, M]`` -> ``[K, N]``).
* :class:`HungarianMatcher` builds ONE padded cost tensor ``[L*B, N, T]`` for every stage and image with batched
  tensor ops (no per-image Python loop; on the CPU it is filled in cache-sized chunks of images) and solves it with
  :func:`linear_assignment`.
* :func:`pad_targets` turns the usual list of target dicts into padded tensors.

Assignments are dense: ``LongTensor[..., N]`` with the matched column (target index) of each row, -1 if unmatched.
"""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .boxes import cxcywh_to_xyxy, generalized_box_iou

try:  # optional exact batched solver (PyPI ``torch-linear-assignment``); only used for CUDA tensors
    from torch_linear_assignment import batch_linear_assignment as _batch_solver
except Exception:  # noqa: BLE001 - not installed / broken build: the CPU path is always available
    _batch_solver = None


# ----------------------------------------------------------------------------------------------- linear assignment
def _big_value(cost: Tensor, valid: Tensor) -> Tensor:
    """A finite cost larger than any assignment's worth of valid finite entries, per problem.

    cost [K, N, M], valid bool broadcastable to it -> [K, 1, 1]: ``2 * min(N, M) * max|finite valid c| + 1``, so one
    entry of this value outweighs any difference between two assignments made of finite valid entries.
    """
    n = min(cost.shape[-2], cost.shape[-1])
    finite = torch.isfinite(cost) & valid
    zero = torch.zeros((), dtype=cost.dtype, device=cost.device)
    return 2 * n * torch.where(finite, cost.abs(), zero).amax((1, 2), keepdim=True) + 1


def _sanitize_np(sub: np.ndarray) -> np.ndarray:
    """nan / +inf / -inf -> ``2 * min(n, m) * max|finite| + 1`` (one problem, float64 [n, m]).

    A pair with a non-finite cost is thus used only when no all-finite assignment of the same size exists
    (transformers uses the dtype's max instead; a moderate value keeps the solver's arithmetic on the other entries
    exact enough).
    """
    finite = np.isfinite(sub)
    if finite.all():
        return sub
    big = 2 * min(sub.shape) * (np.abs(sub[finite]).max() if finite.any() else 0.0) + 1
    return np.where(finite, sub, big)


def _selectors(mask: Tensor | None, size: int, K: int) -> list:
    """Per problem, a slice (valid entries form a prefix: no copy) or an index array.  mask [K, size] bool (CPU)."""
    if mask is None:
        return [slice(0, size)] * K
    count = mask.sum(1)
    prefix = (mask == (torch.arange(size)[None, :] < count[:, None])).all(1)
    return [slice(0, n) if p else mask[k].nonzero().squeeze(1).numpy()
            for k, (n, p) in enumerate(zip(count.tolist(), prefix.tolist()))]


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_threads = min(8, os.cpu_count() or 1)
PARALLEL_MIN_ENTRIES = 1 << 16  # below this many cost entries a batch is solved on the calling thread


def set_assignment_threads(n: int) -> None:
    """How many CPU threads solve the problems of one :func:`linear_assignment` call (default min(8, cores)).

    scipy's solver releases the GIL, so threads give real parallelism; 1 solves every problem in the caller."""
    global _threads, _pool
    if n < 1:
        raise ValueError(f"assignment threads must be >= 1, got {n}")
    with _pool_lock:
        if _pool is not None and n != _threads:
            _pool.shutdown(wait=True)
            _pool = None
        _threads = n


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="detrdistill-lsa")
        return _pool


def _solve_range(cn: np.ndarray, rows: list, cols: list, result: np.ndarray, lo: int, hi: int) -> None:
    """Solve problems ``lo..hi-1`` into ``result`` (each problem writes only its own row of it)."""
    for k in range(lo, hi):
        r_sel, c_sel = rows[k], cols[k]
        sub = cn[k][r_sel][:, c_sel]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        r, j = linear_sum_assignment(_sanitize_np(sub.astype(np.float64)))
        r = r if isinstance(r_sel, slice) else r_sel[r]
        result[k, r] = j if isinstance(c_sel, slice) else c_sel[j]


def _host_problems(cost: Tensor, row_valid: Tensor | None, col_valid: Tensor | None) -> tuple:
    """One batch moved to the host: (costs [K, N, M] numpy, row selectors, column selectors, result [K, N] of -1)."""
    K, N, M = cost.shape
    c = cost.detach()
    c = c.float() if c.dtype in (torch.float16, torch.bfloat16) else c
    cn = c.cpu().numpy()  # the one device -> host transfer of this batch
    rows = _selectors(None if row_valid is None else row_valid.cpu(), N, K)
    cols = _selectors(None if col_valid is None else col_valid.cpu(), M, K)
    return cn, rows, cols, np.full((K, N), -1, dtype=np.int64)


def _solve_jobs(jobs: list[tuple]) -> None:
    """Solve every problem of every job ``(cn, rows, cols, result)`` in place, the problems of all jobs together
    split into one contiguous range per thread (balanced by entry count) when there are enough entries."""
    sizes = [job[0].shape[1] * job[0].shape[2] for job in jobs for _ in range(job[0].shape[0])]
    flat = [(j, k) for j, job in enumerate(jobs) for k in range(job[0].shape[0])]
    total = sum(sizes)
    parts = min(_threads, len(flat)) if total >= PARALLEL_MIN_ENTRIES else 1

    def run(lo: int, hi: int) -> None:
        for j, k in flat[lo:hi]:
            cn, rows, cols, result = jobs[j]
            _solve_range(cn, rows, cols, result, k, k + 1)

    if parts <= 1:
        run(0, len(flat))
        return
    cum = np.cumsum(sizes)
    bounds = [0] + [int(np.searchsorted(cum, total * i / parts, side="right")) for i in range(1, parts)] + [len(flat)]
    futures = [_executor().submit(run, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for f in futures:
        f.result()


def _solve_cpu(cost: Tensor, row_valid: Tensor | None, col_valid: Tensor | None) -> Tensor:
    """scipy on the valid sub-matrix of each problem.  cost [K, N, M] -> LongTensor [K, N] on the CPU.

    Large batches are split into one contiguous range of problems per thread (see :func:`set_assignment_threads`)."""
    job = _host_problems(cost, row_valid, col_valid)
    _solve_jobs([job])
    return torch.from_numpy(job[3])


def _solve_padded(cost: Tensor, row_valid: Tensor | None, col_valid: Tensor | None, solver) -> Tensor:
    """Masks folded into the costs, then one call of a batched full-problem ``solver([K,N,M]) -> [K,N]``.

    Exactness: with all rows valid and N >= M every column is assigned in every optimal solution, so invalid
    columns may cost any constant (0 here; no large numbers, float32 stays accurate).  Otherwise each invalid entry
    costs ``S * (big + max|c|) + 1`` (S = min(N, M), big = :func:`_big_value`), which makes any assignment with fewer
    valid pairs more expensive; the invalid-pair part is then a constant, so the valid part is optimal.  Computed in
    float64 in that case.  Rows matched to an invalid column, and invalid rows, become -1.
    """
    K, N, M = cost.shape
    c = cost.detach()
    valid = torch.ones((K, N, M), dtype=torch.bool, device=c.device)
    if row_valid is not None:
        valid = valid & row_valid[:, :, None]
    if col_valid is not None:
        valid = valid & col_valid[:, None, :]
    if row_valid is None and N >= M:
        c = c.float() if c.dtype in (torch.float16, torch.bfloat16) else c
        c = torch.where(valid, c, torch.zeros((), dtype=c.dtype, device=c.device))
        c = torch.where(torch.isfinite(c), c, _big_value(c, valid))
    else:
        c = c.double()
        big = _big_value(c, valid)
        maxabs = (big - 1) / (2 * min(N, M))
        c = torch.where(torch.isfinite(c), c, big)
        c = torch.where(valid, c, min(N, M) * (big + maxabs) + 1)
    assign = solver(c).long()
    matched = assign >= 0
    ok = valid.gather(2, assign.clamp(min=0)[:, :, None]).squeeze(2) & matched
    return torch.where(ok, assign, torch.full_like(assign, -1))


_warned_gpu = False


def linear_assignment(cost: Tensor, row_valid: Tensor | None = None, col_valid: Tensor | None = None) -> Tensor:
    """Exact minimum-cost assignment of K independent rectangular problems.

    cost:      [K, N, M] float (any device; not differentiated)
    row_valid: [K, N] bool or None (all valid) - invalid rows are never matched
    col_valid: [K, M] bool or None (all valid) - invalid columns are never matched
    returns:   LongTensor [K, N] on ``cost.device``: the column matched to each row, -1 if none.

    Each problem is solved optimally on its valid rows/columns: ``min(#valid rows, #valid cols)`` pairs are matched
    and their summed cost is minimal (with ties any optimum may be returned).  Empty problems (M = 0, no valid rows or
    columns) give all -1.  Non-finite costs (nan, +inf, -inf) are replaced by a large finite value
    (``2 * min(n, m) * max|finite valid cost| + 1`` per problem, n x m its valid sub-matrix) so such a pair is used
    only when no all-finite assignment of the same size exists; -inf is treated as invalid too, never as a bonus.

    CUDA tensors use ``torch_linear_assignment.batch_linear_assignment`` when that package is importable (masks
    folded into the costs, see :func:`_solve_padded`); everything else moves the whole batch to the CPU in one
    transfer and calls ``scipy.optimize.linear_sum_assignment`` once per problem on its valid sub-matrix, the
    problems spread over a pool of threads when the batch is large (:func:`set_assignment_threads`).
    """
    global _warned_gpu
    if cost.dim() != 3:
        raise ValueError(f"cost must be [K, N, M], got {tuple(cost.shape)}")
    K, N, M = cost.shape
    if K == 0 or N == 0 or M == 0:
        return torch.full((K, N), -1, dtype=torch.long, device=cost.device)
    if cost.is_cuda and _batch_solver is not None:
        try:
            return _solve_padded(cost, row_valid, col_valid, _batch_solver)
        except Exception as e:  # noqa: BLE001 - fall back to the exact CPU path rather than fail the step
            if not _warned_gpu:
                warnings.warn(f"batched GPU assignment failed ({e!r}); using scipy on the CPU", stacklevel=2)
                _warned_gpu = True
    return _solve_cpu(cost, row_valid, col_valid).to(cost.device)


def linear_assignment_many(problems: list[tuple[Tensor, Tensor | None, Tensor | None]]) -> list[Tensor]:
    """:func:`linear_assignment` of several batches at once: ``[(cost, row_valid, col_valid), ...]`` -> one
    LongTensor [K_i, N_i] per batch, each exactly what ``linear_assignment(cost, row_valid, col_valid)`` returns.

    On the CPU path every problem of every batch goes to one pool dispatch (the threads see them all together, so
    batches of different shapes, e.g. student-vs-GT and student-vs-teacher, are solved in parallel); CUDA tensors
    with the batched GPU solver are solved batch by batch on the GPU.
    """
    out: list[Tensor | None] = [None] * len(problems)
    jobs, where = [], []
    for i, (cost, row_valid, col_valid) in enumerate(problems):
        if cost.dim() != 3:
            raise ValueError(f"cost must be [K, N, M], got {tuple(cost.shape)}")
        K, N, M = cost.shape
        if K == 0 or N == 0 or M == 0 or (cost.is_cuda and _batch_solver is not None):
            out[i] = linear_assignment(cost, row_valid, col_valid)
        else:
            jobs.append(_host_problems(cost, row_valid, col_valid))
            where.append(i)
    _solve_jobs(jobs)
    for i, job in zip(where, jobs):
        out[i] = torch.from_numpy(job[3]).to(problems[i][0].device)
    return out


# ----------------------------------------------------------------------------------------------------- targets
def pad_targets(targets: list[dict], device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pad a list of B target dicts into dense tensors (targets first, padding after).

    targets: B dicts with ``class_labels`` LongTensor[T_b] and ``boxes`` FloatTensor[T_b, 4] (T_b may be 0)
    returns: labels [B, T] long (padding 0), boxes [B, T, 4] float (padding 0.5, 0.5, 1, 1 - a harmless valid box),
             valid [B, T] bool; T = max_b T_b (0 if every image is empty); all on ``device``
             (default: the device of the first target's boxes).
    """
    B = len(targets)
    if device is None:
        device = targets[0]["boxes"].device if B else torch.device("cpu")
    dtype = targets[0]["boxes"].dtype if B and targets[0]["boxes"].is_floating_point() else torch.float32
    counts = torch.tensor([len(t["class_labels"]) for t in targets], dtype=torch.long)
    T = int(counts.max()) if B else 0
    labels = torch.zeros((B, T), dtype=torch.long, device=device)
    boxes = torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=dtype, device=device).repeat(B, T, 1)
    valid = torch.arange(T)[None, :] < counts[:, None]
    if T > 0:
        flat_labels = torch.cat([t["class_labels"].reshape(-1) for t in targets]).to(device, torch.long)
        flat_boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).to(device, dtype)
        b_idx = torch.repeat_interleave(torch.arange(B), counts)
        pos = torch.arange(int(counts.sum())) - (counts.cumsum(0) - counts)[b_idx]
        b_idx, pos = b_idx.to(device), pos.to(device)
        labels[b_idx, pos] = flat_labels
        boxes[b_idx, pos] = flat_boxes
    return labels, boxes, valid.to(device)


# ----------------------------------------------------------------------------------------------------- matcher
def focal_class_cost(prob: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Deformable DETR's focal matching cost per (query, class): pos - neg term.  prob [...] -> [...]."""
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    return pos - neg


class HungarianMatcher(nn.Module):
    """One-to-one matching of every decoder stage's queries to the ground truth, batched over stages and images.

    cost = bbox_cost * L1(cxcywh) + class_cost * class term - giou_cost * GIoU, where the class term is the focal
    cost of :func:`focal_class_cost` (``class_loss="focal"``, sigmoid logits [.., C], as transformers'
    ``DeformableDetrHungarianMatcher``) or ``-softmax(logits)[target]`` (``class_loss="ce"``, logits [.., C + 1],
    as DETR's ``HungarianMatcher``).

    ``cpu_chunk_elems`` (attribute, default 2**18): on the CPU the cost tensor is computed for about this many entries
    at a time (measured: 2**18 was 1.2-4x faster than one pass for B=16, L=6, N=300, T=20..300).
    """

    def __init__(self, class_cost: float = 2.0, bbox_cost: float = 5.0, giou_cost: float = 2.0,
                 class_loss: str = "focal", focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if class_loss not in ("focal", "ce"):
            raise ValueError(f"class_loss must be 'focal' or 'ce', got {class_loss!r}")
        if class_cost == 0 and bbox_cost == 0 and giou_cost == 0:
            raise ValueError("all matching costs are 0")
        self.class_cost, self.bbox_cost, self.giou_cost = class_cost, bbox_cost, giou_cost
        self.class_loss, self.focal_alpha, self.focal_gamma = class_loss, focal_alpha, focal_gamma
        self.cpu_chunk_elems = 1 << 18

    def extra_repr(self) -> str:
        return (f"class_cost={self.class_cost}, bbox_cost={self.bbox_cost}, giou_cost={self.giou_cost}, "
                f"class_loss={self.class_loss!r}")

    @torch.no_grad()
    def problem_costs(self, logits: Tensor, boxes: Tensor, labels: Tensor, tgt_boxes: Tensor) -> Tensor:
        """Costs of K independent problems (one image at one stage each), computed in one batched pass.

        logits [K, N, C'], boxes [K, N, 4] cxcywh, labels [K, T] long, tgt_boxes [K, T, 4] cxcywh -> cost [K, N, T]
        (padding columns hold finite but meaningless values; mask them).
        """
        K, N, C = logits.shape
        T = labels.shape[1]
        index = labels[:, None, :].expand(K, N, T)
        if self.class_loss == "focal":
            prob = logits.sigmoid()
            if T < C:  # gather first: fewer elements to evaluate the cost on
                cls = focal_class_cost(prob.gather(2, index), self.focal_alpha, self.focal_gamma)
            else:
                cls = focal_class_cost(prob, self.focal_alpha, self.focal_gamma).gather(2, index)
        else:
            cls = -logits.softmax(-1).gather(2, index)
        cost = torch.cdist(boxes, tgt_boxes, p=1).mul_(self.bbox_cost)
        cost.add_(cls.mul_(self.class_cost))
        giou = generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes))
        return cost.sub_(giou.mul_(self.giou_cost))  # bbox*L1 + class*cls - giou*GIoU, in place

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, tgt_boxes: Tensor) -> Tensor:
        """Padded matching costs of every stage and image.

        logits [L, B, N, C'], boxes [L, B, N, 4] cxcywh, labels [B, T] long, tgt_boxes [B, T, 4] cxcywh
        -> cost [L, B, N, T] (padding columns hold finite but meaningless values; mask them with ``valid``).

        On the CPU the L*B problems are evaluated in chunks of about ``cpu_chunk_elems`` cost entries so the
        elementwise intermediates stay in cache (one pass over a 35 MB tensor per op is memory bound and, above glibc's
        mmap threshold, pays page faults on every allocation); on CUDA in one pass.
        """
        L, B, N, C = logits.shape
        T = labels.shape[1]
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        K = L * B
        args = (logits.reshape(K, N, C), boxes.to(logits.dtype).reshape(K, N, 4), labels.repeat(L, 1),
                tgt_boxes.to(logits.dtype).repeat(L, 1, 1))
        step = K if logits.is_cuda else max(1, self.cpu_chunk_elems // max(1, N * max(T, C)))
        if step >= K:
            return self.problem_costs(*args).view(L, B, N, T)
        out = logits.new_empty((K, N, T))
        for s in range(0, K, step):  # memory chunking, not a per-image loop (step images per pass)
            out[s:s + step] = self.problem_costs(*(a[s:s + step] for a in args))
        return out.view(L, B, N, T)

    @torch.no_grad()
    def match_padded(self, logits: Tensor, boxes: Tensor, labels: Tensor, tgt_boxes: Tensor, valid: Tensor) -> Tensor:
        """Match with already padded targets (see :func:`pad_targets`).  -> LongTensor [L, B, N], -1 = unmatched."""
        L, B, N, _ = logits.shape
        T = labels.shape[1]
        if T == 0 or N == 0:
            return torch.full((L, B, N), -1, dtype=torch.long, device=logits.device)
        cost = self.cost_matrix(logits, boxes, labels, tgt_boxes)
        assign = linear_assignment(cost.reshape(L * B, N, T), None, valid.repeat(L, 1))
        return assign.view(L, B, N)

    @torch.no_grad()
    def forward(self, logits: Tensor, boxes: Tensor, targets: list[dict]) -> Tensor:
        """logits [L, B, N, C'], boxes [L, B, N, 4], targets (B dicts) -> LongTensor [L, B, N]: target index or -1."""
        if logits.dim() != 4 or boxes.shape[:3] != logits.shape[:3]:
            raise ValueError(f"expected logits [L,B,N,C] and boxes [L,B,N,4], got {tuple(logits.shape)}, "
                             f"{tuple(boxes.shape)}")
        if len(targets) != logits.shape[1]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[1]}")
        labels, tgt_boxes, valid = pad_targets(targets, logits.device)
        return self.match_padded(logits, boxes, labels, tgt_boxes, valid)
