"""Speed benchmark: seconds per training step and matcher time, in one run on one device.

    python benchmarks/speed.py                          # teacher + student configs of bccd, this device
    python benchmarks/speed.py --configs configs/raccoon_teacher.yaml --batch-size 8 --steps 10

Per config, on the same batch: the bare model forward+backward (no loss), with transformers' own loss,
with our criterion (adapter + SetCriterion), and the full engine step (data loading, model, our
criterion, optimizer, grad clipping) measured on a real DataLoader. Matching: 16 images x 6 stages x
300 queries x 300 targets, batched vs a per-image scipy loop vs transformers' matcher. Peak GPU memory. ``engine_step_s``: seconds per step of the
real training loop (``run_training``) across 3 epoch boundaries, next to the isolated ``full_step_s``.
Results: ``benchmarks/results/speed-<device>-<date>.json`` and ``.md``.

Distilled step (``distill`` rows, for each ``X_teacher.yaml`` / ``X_student.yaml`` pair among ``--configs`` and each
``--pair TEACHER STUDENT``): the
student's own step, the teacher forward and the distilled step on one fixed batch, interleaved round by round
(medians), then the distilled step once more under :mod:`detrdistill.profiling` for seconds per part. Matching
``threads`` rows: a per-image loop vs our matcher with 1 and ``--threads`` solver threads.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --configs configs/cpu/bccd_teacher.yaml configs/cpu/bccd_student.yaml \
        configs/cpu/raccoon_teacher.yaml configs/cpu/raccoon_student.yaml     # CPU pairs (benchmarks/results)
    bash benchmarks/gpu/speed.sh                                               # the same on a GPU machine
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import results_file, run_env  # noqa: E402
from detrdistill.config import load_config  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, steps: int, warmup: int = 2, times: list | None = None) -> float:
    """Median seconds of ``fn`` over ``steps`` calls after ``warmup``; every time is appended to ``times``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = [] if times is None else times
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_config(path: str, device: torch.device, batch_size: int | None, steps: int, overrides: list[str]) -> dict:
    from detrdistill.data import collate_fn
    from detrdistill.engine.loading import train_loader
    from detrdistill.engine.optim import build_optimizer
    from detrdistill.engine.setup import build_datasets, make_accelerator
    from detrdistill.engine.tasks import move_targets
    from detrdistill.models.families import get_adapter
    from detrdistill.models.family_loss import student_criterion
    from detrdistill.models.build import build_model, count_parameters

    cfg = load_config(path, overrides + ([f"train.batch_size={batch_size}"] if batch_size else []))
    # one image size and no crop, so every batch of the full-step loop has the shape the bare step timed
    cfg.data = cfg.data.model_copy(update={"min_size": [max(cfg.data.min_size)], "crop": 0.0})
    acc = make_accelerator(cfg)
    train_ds, _ = build_datasets(cfg, acc)
    model = build_model(cfg.model, train_ds.id2label).to(device)
    adapter = get_adapter(model)
    crit = student_criterion(cfg.loss, adapter)
    opt = build_optimizer(adapter, cfg.optim)
    loader, _ = train_loader(train_ds, collate_fn, cfg.train.batch_size, 0, 0, 1, cfg.data.num_workers)
    batch = next(iter(loader))
    pv, pm = batch["pixel_values"].to(device), batch["pixel_mask"].to(device)
    targets = move_targets(batch["labels"], device)
    amp = cfg.train.mixed_precision == "bf16" and device.type == "cuda"
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def bare():
        with ctx():
            out = model(pixel_values=pv, pixel_mask=pm)
            loss = out.logits.float().sum() + out.pred_boxes.float().sum()
        loss.backward()
        opt.zero_grad(set_to_none=True)

    def hf_loss():
        model.config.auxiliary_loss = True
        try:
            with ctx():
                out = model(pixel_values=pv, pixel_mask=pm, labels=targets)
            out.loss.backward()
        finally:
            model.config.auxiliary_loss = False
        opt.zero_grad(set_to_none=True)

    def ours():
        with ctx():
            out = adapter(pv, pm, targets=targets, criterion=crit)
        out.loss.backward()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = {"config": path, "params": count_parameters(model).total, "batch_size": cfg.train.batch_size,
           "image_shape": list(pv.shape[-2:]), "mixed_precision": "bf16" if amp else "no"}
    res["bare_fwd_bwd_s"] = _time(bare, device, steps)
    try:
        res["transformers_loss_s"] = _time(hf_loss, device, steps)
    except Exception as e:  # some families' HF losses need inputs we do not build
        res["transformers_loss_s"] = None
        res["transformers_loss_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    res["ours_s"] = _time(ours, device, steps)

    # full engine step: loader (its workers), model, criterion, optimizer, clipping
    it = iter(loader)  # endless

    def full_step():
        b = next(it)
        x, m = b["pixel_values"].to(device, non_blocking=True), b["pixel_mask"].to(device, non_blocking=True)
        t = move_targets(b["labels"], device)
        with ctx():
            out = adapter(x, m, targets=t, criterion=crit)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), cfg.optim.grad_clip or 1e9)
        opt.step()
        opt.zero_grad(set_to_none=True)

    full_times: list[float] = []
    # with data.cache_images the steady state starts after the first epoch: time from there, as engine_step does
    warm = len(train_ds) // cfg.train.batch_size + 2 if cfg.data.cache_images else 2
    res["full_step_s"] = _time(full_step, device, steps, warmup=warm, times=full_times)
    # the engine's seconds per step is a mean (elapsed / steps); its comparison uses the full step's mean too,
    # since loader stalls make the full step's time right-skewed (median < mean)
    res["full_step_mean_s"] = statistics.fmean(full_times)
    res["full_over_bare"] = res["full_step_s"] / res["bare_fwd_bwd_s"]
    res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del acc
    return res


def engine_step(path: str, batch_size: int | None, overrides: list[str], boundaries: int = 3,
                warmup: int = 10) -> dict:
    """Seconds per step of the real training loop (``run_training``: loader workers, model, criterion,
    optimizer, logging, checkpoints) between step ``warmup`` (after the first epoch when ``data.cache_images``
    is on) and the end of ``boundaries`` more epochs, on the same data settings as the isolated steps (one image
    size, no crop), evaluation off."""
    import tempfile

    from detrdistill.engine.metrics import read_metrics
    from detrdistill.engine.tasks import DetectionTask
    from detrdistill.engine.trainer import run_training

    cfg = load_config(path, overrides + ([f"train.batch_size={batch_size}"] if batch_size else []))
    # evaluation is off: no val/test split is built (or decoded) at all, neither here nor in the run
    cfg.data = cfg.data.model_copy(update={"min_size": [max(cfg.data.min_size)], "crop": 0.0, "val": None,
                                           "test": None})
    with tempfile.TemporaryDirectory() as tmp:
        from detrdistill.engine.trainer import build_datasets, make_accelerator
        n_train = len(build_datasets(cfg, make_accelerator(cfg))[0])
        per_epoch = n_train // cfg.train.batch_size
        if cfg.data.cache_images:  # the first epoch fills the image cache: time the steady state after it
            warmup = max(warmup, per_epoch + 2)
        steps = warmup + boundaries * per_epoch + 1
        cfg.train = cfg.train.model_copy(update={"output_dir": tmp, "max_steps": steps, "epochs": None,
                                                 "time_budget_min": None, "eval_every_epochs": 0, "log_every": 1,
                                                 "progress": False})
        run_training(cfg, DetectionTask)
        times = {r["step"]: r["time_s"] for r in read_metrics(f"{tmp}/metrics.jsonl") if "time_s" in r}
    return {"engine_step_s": (times[steps] - times[warmup]) / (steps - warmup), "engine_steps_timed": steps - warmup,
            "epoch_boundaries_crossed": boundaries, "steps_per_epoch": per_epoch}


# ----------------------------------------------------------------------------------------------- distilled step
def config_pairs(paths: list[str]) -> list[tuple[str, str]]:
    """(teacher, student) pairs among ``paths``: ``X_teacher.yaml`` with ``X_student.yaml`` of the same folder."""
    pairs = []
    for p in paths:
        if p.endswith("_teacher.yaml"):
            s = p[: -len("_teacher.yaml")] + "_student.yaml"
            if s in paths:
                pairs.append((p, s))
    return pairs


def _distill_setup(teacher_path: str, student_path: str, device, batch_size, overrides: list[str]):
    """Teacher (random weights: the same compute as a trained one) + student + Distiller + criterion + optimizer
    + one fixed batch of the student config's training data (one image size, no crop)."""
    from detrdistill.data import collate_fn
    from detrdistill.distillation import Distiller
    from detrdistill.engine.loading import train_loader
    from detrdistill.engine.optim import build_optimizer
    from detrdistill.engine.setup import build_datasets, make_accelerator
    from detrdistill.engine.tasks import move_targets
    from detrdistill.models.family_loss import student_criterion
    from detrdistill.models.families import get_adapter
    from detrdistill.models.build import build_model

    extra = overrides + ([f"train.batch_size={batch_size}"] if batch_size else [])
    cfg, t_cfg = load_config(student_path, extra), load_config(teacher_path, extra)
    cfg.data = cfg.data.model_copy(update={"min_size": [max(cfg.data.min_size)], "crop": 0.0})
    amp = cfg.train.mixed_precision == "bf16" and device.type == "cuda"
    dcfg = cfg.distill.model_copy(update={"teacher_dtype": "bfloat16"}) if amp else cfg.distill
    acc = make_accelerator(cfg)
    train_ds, _ = build_datasets(cfg, acc)
    teacher = get_adapter(build_model(t_cfg.model, train_ds.id2label).to(device))
    student = get_adapter(build_model(cfg.model, train_ds.id2label).to(device))
    dist = Distiller(teacher, student, dcfg).to(device)
    dist.train()
    crit = student_criterion(cfg.loss, student)
    loader, _ = train_loader(train_ds, collate_fn, cfg.train.batch_size, 0, 0, 1, cfg.data.num_workers)
    batch = next(iter(loader))
    pv, pm = batch["pixel_values"].to(device), batch["pixel_mask"].to(device)
    targets = move_targets(batch["labels"], device)
    return cfg, amp, dist, crit, build_optimizer(dist, cfg.optim), (pv, pm, targets)


def _profile_parts(seconds: dict[str, float], steps: int) -> dict[str, float]:
    """Per-step seconds per part; ``losses:<term>`` = the term's time minus the sections nested in it."""
    per = {k: v / steps for k, v in seconds.items()}
    nested = {"logits": ["student_teacher_matching"], "feature": ["feature_mask"],
              "query_prior": ["query_prior_decode", "teacher_assignments"], "contrastive": ["student_teacher_matching"]}
    out = {k: v for k, v in per.items() if not k.startswith("term:")}
    for k, v in per.items():
        if k.startswith("term:"):
            name = k[len("term:"):]
            # a shared section (e.g. teacher_assignments) is charged to the first term that computed it
            out[f"losses:{name}"] = max(0.0, v - sum(per.get(n, 0.0) for n in nested.get(name, [])))
    out["student_loss"] = max(0.0, per.get("student_loss", 0.0) - per.get("student_gt_matching", 0.0))
    return out


def bench_distill(teacher_path: str, student_path: str, device, batch_size, steps: int, overrides: list[str]) -> dict:
    """Seconds per step, on one fixed batch, of the student's own step, the teacher forward and the distilled step
    (each: forward, loss, backward, clipping, optimizer), measured interleaved (one of each per round, medians:
    fair under contention), then a profiled run of the distilled step per part."""
    from detrdistill import profiling

    cfg, amp, dist, crit, opt, (pv, pm, targets) = _distill_setup(teacher_path, student_path, device, batch_size,
                                                                 overrides)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    clip = cfg.optim.grad_clip or 1e9
    params = dist.trainable_parameters()

    def finish(loss):
        with profiling.section("backward"):
            loss.backward()
        with profiling.section("optimizer"):
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def student_step():
        with ctx():
            out = dist.student(pv, pm, targets, crit)
        finish(out.loss)

    def teacher_forward():
        with ctx():
            dist.teacher_forward(pv, pm)

    def distill_step():
        with ctx():
            out = dist(pv, pm, targets, crit)
        finish(out.loss)

    fns = {"student_step_s": student_step, "teacher_forward_s": teacher_forward, "distill_step_s": distill_step}
    for fn in fns.values():  # warm-up
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    res = {"teacher": teacher_path, "student": student_path, "batch_size": cfg.train.batch_size,
           "image_shape": list(pv.shape[-2:]), "mixed_precision": "bf16" if amp else "no",
           "teacher_dtype": "bfloat16" if amp else dist.cfg.teacher_dtype, "rounds": steps}
    res.update({k: statistics.median(v) for k, v in times.items()})
    res["distill_over_student_plus_teacher"] = res["distill_step_s"] / (res["student_step_s"] + res["teacher_forward_s"])
    with profiling.enabled() as prof:
        for _ in range(steps):
            distill_step()
    res["profile_s"] = _profile_parts(prof.seconds, steps)
    return res


def bench_matching_threads(B: int, L: int, N: int, T: int, device, threads: int, repeats: int = 5) -> dict:
    """ms for all B*L assignment problems (N x T, random costs and classes): a per-image loop (cost + scipy per
    image, one thread) vs our matcher with 1 and with ``threads`` solver threads; interleaved rounds, medians."""
    from scipy.optimize import linear_sum_assignment

    from detrdistill.ops.matcher import HungarianMatcher, set_assignment_threads

    g = torch.Generator().manual_seed(0)
    C = 80
    logits = torch.randn(L, B, N, C, generator=g).to(device)
    boxes = (torch.rand(L, B, N, 4, generator=g) * 0.5 + 0.25).to(device)
    targets = [{"class_labels": torch.randint(0, C, (T,), generator=g).to(device),
                "boxes": (torch.rand(T, 4, generator=g) * 0.5 + 0.25).to(device)} for _ in range(B)]
    matcher = HungarianMatcher()

    def per_image():
        for l in range(L):
            for b in range(B):
                lab, tb = targets[b]["class_labels"][None], targets[b]["boxes"][None]
                c = matcher.cost_matrix(logits[l:l + 1, b:b + 1], boxes[l:l + 1, b:b + 1], lab, tb)[0, 0]
                linear_sum_assignment(c.cpu().numpy())

    def ours():
        matcher(logits, boxes, targets)

    # name -> (solver threads set before the timer starts, function)
    fns = {"per_image_loop_ms": (1, per_image), "ours_1_thread_ms": (1, ours), f"ours_{threads}_threads_ms": (threads, ours)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    try:
        for n, fn in fns.values():
            set_assignment_threads(n)
            fn()
        for _ in range(repeats):
            for k, (n, fn) in fns.items():
                set_assignment_threads(n)
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        set_assignment_threads(min(8, os.cpu_count() or 1))
    res = {"B": B, "L": L, "N": N, "T": T, "threads": threads, "cpu_count": os.cpu_count(), "repeats": repeats}
    res.update({k: statistics.median(v) for k, v in times.items()})
    res["speedup_threads_vs_loop"] = res["per_image_loop_ms"] / res[f"ours_{threads}_threads_ms"]
    res["speedup_threads_vs_1_thread"] = res["ours_1_thread_ms"] / res[f"ours_{threads}_threads_ms"]
    res["target_speedup_vs_loop"] = 0.7 * threads
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=None,
                   help="configs to time (default configs/bccd_{teacher,student}.yaml unless --pair is given); "
                        "X_teacher.yaml with X_student.yaml also make a distilled-step pair")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("TEACHER", "STUDENT"),
                   help="a distilled-step pair whose names do not follow X_teacher / X_student (repeatable)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--match", nargs=4, type=int, default=[16, 6, 300, 300], metavar=("B", "L", "N", "T"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="solver threads of the matching rows")
    p.add_argument("--parts", nargs="+", default=["models", "engine", "distill", "matching"],
                   choices=["models", "engine", "distill", "matching"])
    p.add_argument("--note", default="", help="free text stored in the results (e.g. CPU contention)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.configs is None:
        args.configs = [] if args.pair else ["configs/bccd_teacher.yaml", "configs/bccd_student.yaml"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from benchmarks.bench_matching import benchmark_matching

    date = dt.date.today().isoformat()
    res = {"device": run_env.device_name(), "date": date, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "environment": run_env.environment(torch.get_num_threads()),
           "command": shlex.join(["python", "benchmarks/speed.py", *sys.argv[1:]]), "note": args.note,
           "models": [], "distill": []}
    for c in args.configs if "models" in args.parts else []:
        res["models"].append(bench_config(c, device, args.batch_size, args.steps, args.set))
        if "engine" in args.parts:
            res["models"][-1].update(engine_step(c, args.batch_size, args.set))
            m = res["models"][-1]
            m["engine_over_full"] = m["engine_step_s"] / m["full_step_s"]
            m["engine_over_full_mean"] = m["engine_step_s"] / m["full_step_mean_s"]
        print(json.dumps(res["models"][-1]), flush=True)
    for t, s in config_pairs(args.configs) + [tuple(p) for p in args.pair] if "distill" in args.parts else []:
        res["distill"].append(bench_distill(t, s, device, args.batch_size, args.steps, args.set))
        print(json.dumps(res["distill"][-1]), flush=True)
    B, L, N, T = args.match
    if "matching" in args.parts:
        res["matching"] = benchmark_matching(B=B, L=L, N=N, T=T, device=device)
        res["matching"]["threads"] = bench_matching_threads(B, L, N, T, device, args.threads)
        print(json.dumps(res["matching"]), flush=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"speed-{tag}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_atomic(out, res)
    results_file.write_atomic(out.with_suffix(".md"), markdown(res) + "\n")
    print(markdown(res))
    return 0


def _models_table(models: list[dict]) -> list[str]:
    lines = ["| config | params | batch | image | bare fwd+bwd s | + transformers loss s | + our criterion s | "
             "full step s | full / bare | full step mean s | engine step s (mean) | engine / full | "
             "engine / full mean | peak GPU GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        hf = f"{m['transformers_loss_s']:.4f}" if m["transformers_loss_s"] else "n/a"
        mem = f"{m['peak_gpu_mem_gb']:.2f}" if m["peak_gpu_mem_gb"] else "n/a"
        full_mean = f"{m['full_step_mean_s']:.4f}" if "full_step_mean_s" in m else "n/a"
        eng = (f"{m['engine_step_s']:.4f} | {m['engine_over_full']:.2f} | {m.get('engine_over_full_mean', 0):.2f}"
               if "engine_step_s" in m else "n/a | n/a | n/a")
        lines.append(f"| {m['config']} | {m['params'] / 1e6:.1f} M | {m['batch_size']} | {m['image_shape']} | "
                     f"{m['bare_fwd_bwd_s']:.4f} | {hf} | {m['ours_s']:.4f} | {m['full_step_s']:.4f} | "
                     f"{m['full_over_bare']:.2f} | {full_mean} | {eng} | {mem} |")
    return lines


def _distill_tables(rows: list[dict]) -> list[str]:
    lines = ["| teacher | student | batch | image | student step s | teacher forward s | distilled step s | "
             "distilled / (student + teacher fwd) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['teacher']} | {r['student']} | {r['batch_size']} | {r['image_shape']} | "
                     f"{r['student_step_s']:.4f} | {r['teacher_forward_s']:.4f} | {r['distill_step_s']:.4f} | "
                     f"{r['distill_over_student_plus_teacher']:.2f} |")
    parts = sorted({k for r in rows for k in r["profile_s"]})
    lines += ["", "Profile of the distilled step, seconds per step per part (sections nest: `student_loss` and "
              "`losses:<term>` exclude the matching / mask / decode sections listed separately):", "",
              "| part | " + " | ".join(Path(r["student"]).stem for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for k in parts:
        lines.append(f"| {k} | " + " | ".join(f"{r['profile_s'].get(k, 0.0):.4f}" for r in rows) + " |")
    return lines


def markdown(res: dict) -> str:
    lines = [f"# Speed: {res['device']}, {res['date']}, torch {res['torch']}", "", f"command: `{res['command']}`", "",
             f"environment: {run_env.describe(res.get('environment'))}", ""]
    if res.get("note"):
        lines += [f"note: {res['note']}", ""]
    if res["models"]:
        lines += _models_table(res["models"]) + [""]
    if res["distill"]:
        lines += _distill_tables(res["distill"]) + [""]
    if "matching" in res:
        mt = res["matching"]
        lines += [f"Matching {mt['B']} images x {mt['L']} stages x {mt['N']} queries x {mt['T']} targets "
                  "(ms, median):", "",
                  "| ours batched | per-image scipy loop | transformers matcher | speed-up vs loop |", "|---|---|---|---|",
                  f"| {mt['ours_batched']:.1f} | {mt['per_image_scipy']:.1f} | "
                  f"{mt.get('transformers') or float('nan'):.1f} | {mt['per_image_scipy'] / mt['ours_batched']:.1f}x |"]
        th = mt.get("threads")
        if th:
            n = th["threads"]
            lines += ["", f"Solver threads ({th['cpu_count']} CPUs; interleaved rounds, ms, median):", "",
                      f"| per-image loop | ours 1 thread | ours {n} threads | speed-up vs loop (target {0.7 * n:.1f}x) "
                      f"| {n} threads vs 1 |", "|---|---|---|---|---|",
                      f"| {th['per_image_loop_ms']:.1f} | {th['ours_1_thread_ms']:.1f} | {th[f'ours_{n}_threads_ms']:.1f} "
                      f"| {th['speedup_threads_vs_loop']:.2f}x | {th['speedup_threads_vs_1_thread']:.2f}x |"]
    return "\n".join(lines)


if __name__ == "__main__":
    from detrdistill.errors import DetrDistillError

    try:
        sys.exit(main())
    except DetrDistillError as e:  # a bad config or data path: one line, not a trace from deep inside the build
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
