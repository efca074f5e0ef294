"""Mutation check of the DETRDistill formulas: does some distillation test fail when one formula is changed?

Each mutant is ONE plausible edit of the package (a weight, a normaliser, which stage, which activation, detach,
sign, τ, top-k, mask floor, per-image vs per-batch, ...).  For each, a temporary copy of ``detrdistill/`` and
``tests/`` gets the edit, and the distillation tests run against that copy (one thread, ``-x``: the first failing
test is recorded).  The working tree is never modified.

    PYTHONPATH=$PWD .venv/bin/python scripts/mutation_check.py [--only ID,ID] [--suite new|old]
                                                              [--chunk I/N] [--state FILE] [--out FILE.md]

``--suite new`` (default) runs every distillation test; ``--suite old`` only those that existed before the method
tests (``tests/test_method_reference.py``, ``tests/test_step_matching_reference.py``), to show which mutants the
older tests let through.  Results accumulate in ``--state`` (JSON, per suite and mutant) so the run can be split
into chunks with ``--only``; ``--out`` renders every recorded result as Markdown.  A mutant whose expected outcome is
"equivalent" documents why surviving is harmless.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEW_TESTS = ["tests/test_method_reference.py", "tests/test_step_matching_reference.py"]
OLD_TESTS = ["tests/test_distill_losses.py", "tests/test_terms.py", "tests/test_distiller.py",
             "tests/test_step_speed.py"]
SUITES = {"new": NEW_TESTS + OLD_TESTS, "old": OLD_TESTS}
TIMEOUT_S = 420  # one mutant's test run


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str          # relative to the repository root
    old: str           # must occur exactly once in the file
    new: str
    what: str
    equivalent: str = ""  # why surviving is harmless, when the mutant is expected to survive
    review: bool = False  # one of the mutations the outside review found surviving


D = "detrdistill/distillation/"
MUTANTS = [
    # ------------------------------------------------------------------ the review's survivors
    Mutant("feature-last-stage-only", D + "terms.py",
           "quality_scores(t.logits, t.boxes, ctx.targets, self.top_k, t.class_activation)\n"
           "            masks = target_aware_mask(t.embeddings, t_feats,",
           "quality_scores(t.logits[-1:], t.boxes[-1:], ctx.targets, self.top_k, t.class_activation)\n"
           "            masks = target_aware_mask(t.embeddings[-1:], t_feats,",
           "feature mask built from the last teacher stage only (official: every stage)", review=True),
    Mutant("mask-peak-per-batch", D + "feature.py",
           "peak = a.flatten(-2).amax(-1).clamp(min=floor)[..., None, None]",
           "peak = a.flatten(-3).amax(-1).clamp(min=floor)[..., None, None, None]",
           "target-aware mask divided by the batch's peak instead of each image's", review=True),
    Mutant("top-k-300", "detrdistill/config.py", "top_k: int = Field(100, ge=1)", "top_k: int = Field(300, ge=1)",
           "feature.top_k default 100 -> 300", review=True),
    Mutant("tau-0.2", "detrdistill/config.py", "temperature: float = Field(0.07, gt=0)",
           "temperature: float = Field(0.2, gt=0)", "contrastive.temperature default 0.07 -> 0.2", review=True),
    Mutant("logits-giou-weight-1", "detrdistill/config.py",
           "    giou_weight: float = 2.0\n    neg_weight", "    giou_weight: float = 1.0\n    neg_weight",
           "logits.giou_weight default 2 -> 1", review=True),
    Mutant("contrastive-times-tau", D + "contrastive.py", "(zt @ zs.t()).float() / self.temperature",
           "(zt @ zs.t()).float() * self.temperature", "InfoNCE logits multiplied by τ instead of divided",
           review=True),
    Mutant("contrastive-ignores-stage-map", D + "contrastive.py", "t = teacher_embeddings[t_stage, b_idx,",
           "t = teacher_embeddings[l, b_idx,", "contrastive pairs read teacher stage l, not stage_map[l]", review=True),
    Mutant("softmax-teacher-sigmoid-logits", D + "logits.py", "target = class_probs(z_t, teacher_activation)",
           'target = z_t[..., :-1].sigmoid() if teacher_activation == "softmax" else z_t.sigmoid()',
           "logits term: a softmax teacher's soft targets through a sigmoid", review=True),
    Mutant("pos-neg-neg-by-pos-count", D + "logits.py",
           "per_stage(cls * neg_f) / per_stage(neg_f).clamp(min=1)).sum()",
           "per_stage(cls * neg_f) / n_pos_global).sum()",
           "pos_neg: negative term normalised by the positive count", review=True),
    # ------------------------------------------------------------------ activations
    Mutant("softmax-teacher-sigmoid-quality", D + "feature.py",
           "probs = class_probs(teacher_logits.detach().float(), activation)",
           'probs = (teacher_logits.detach().float()[..., :-1] if activation == "softmax" '
           'else teacher_logits.detach().float()).sigmoid()',
           "feature quality scores: a softmax teacher's probabilities through a sigmoid"),
    Mutant("softmax-teacher-sigmoid-positives", D + "logits.py",
           "by_score = class_probs(teacher_logits.detach().float(), teacher_activation).amax(-1)",
           'by_score = (teacher_logits.detach().float()[..., :-1] if teacher_activation == "softmax" '
           'else teacher_logits.detach().float()).sigmoid().amax(-1)',
           "pos_neg positives by score: a softmax teacher through a sigmoid"),
    Mutant("softmax-student-sigmoid", D + "logits.py", "log_q = z_s.log_softmax(-1)[..., :-1]",
           "log_q = F.logsigmoid(z_s[..., :-1])", "a softmax student's class probabilities through a sigmoid"),
    # ------------------------------------------------------------------ feature term
    Mutant("mask-floor-0", D + "feature.py", 'weight, f_hat).clamp(min=floor)', 'weight, f_hat).clamp(min=0.0)',
           "A(x) clamped at 0 instead of the floor"),
    Mutant("mask-floor-default-0.05", "detrdistill/config.py", "mask_floor: float = Field(0.01, gt=0, le=1)",
           "mask_floor: float = Field(0.05, gt=0, le=1)", "feature.mask_floor default 0.01 -> 0.05"),
    Mutant("quality-no-iou", D + "feature.py", "return torch.where(has_gt, scores * best, scores), query",
           "return scores, query", "quality = score alone (the IoU with the GT ignored)"),
    Mutant("quality-no-gt-zero", D + "feature.py", "return torch.where(has_gt, scores * best, scores), query",
           "return scores * best, query", "an image without GT gets quality 0 instead of the score"),
    Mutant("quality-clipped-box", D + "feature.py", "iou, _ = box_iou(cxcywh_to_xyxy(boxes), ",
           "iou, _ = box_iou(cxcywh_to_xyxy(boxes).clamp(0, 1), ", "quality IoU on the clipped teacher box"),
    Mutant("top-k-queries-not-pairs", D + "feature.py",
           "    scores, flat_idx = probs.flatten(-2).topk(k, dim=-1)                 # [..., B, K]\n"
           '    query = torch.div(flat_idx, C, rounding_mode="floor")',
           "    scores, query = probs.amax(-1).topk(min(k, N), dim=-1)",
           "top-K over queries (best class each) instead of (query, class) pairs"),
    Mutant("embeddings-not-normalised", D + "feature.py",
           "emb = F.normalize(teacher_embeddings.detach().float(), dim=-1)",
           "emb = teacher_embeddings.detach().float()", "query embeddings not L2-normalised"),
    Mutant("features-not-normalised", D + "feature.py", "f_hat = F.normalize(feat.detach().float(), dim=1)",
           "f_hat = feat.detach().float()", "teacher features not L2-normalised over channels"),
    Mutant("mask-psi-not-squared", D + "feature.py", "masks[t].detach().float().pow(2)",
           "masks[t].detach().float().pow(1)", "error weighted by Ψ instead of Ψ² (mask on the difference)"),
    Mutant("feature-mean-not-over-channels", D + "feature.py",
           "total = total + (w * sq).sum() / (n_real.clamp(min=1) * C)",
           "total = total + (w * sq).sum() / n_real.clamp(min=1)", "feature MSE summed, not averaged, over channels"),
    Mutant("feature-stages-averaged", D + "feature.py", ".reshape(-1, B, H, W).sum(0)",
           ".reshape(-1, B, H, W).mean(0)", "feature losses of the stages averaged instead of summed"),
    Mutant("feature-teacher-not-detached", D + "feature.py", "tf = teacher_features[t].detach().float()",
           "tf = teacher_features[t].float()", "teacher features not detached in the feature loss"),
    # ------------------------------------------------------------------ logits term
    Mutant("class-loss-mean-over-classes", D + "logits.py",
           "return -(target * log_q + (1 - target) * log_1mq).sum(-1)",
           "return -(target * log_q + (1 - target) * log_1mq).mean(-1)",
           "soft BCE averaged over classes instead of summed"),
    Mutant("class-cost-mean-over-classes", D + "logits.py", "cost = class_cost * pairwise_class_cost(c_terms)",
           "cost = class_cost * pairwise_class_cost(c_terms) / c_terms.target.shape[-1]",
           "matching class cost averaged over classes (mmdet's stock cost) instead of summed"),
    Mutant("teacher-boxes-not-clipped", D + "logits.py",
           "t_boxes = clip_boxes(_flat_stages(teacher_boxes, stage_map).detach().float())",
           "t_boxes = _flat_stages(teacher_boxes, stage_map).detach().float()",
           "teacher boxes not clipped to the image in the loss"),
    Mutant("teacher-logits-not-detached", D + "logits.py", "z_t = teacher_logits.detach().float()",
           "z_t = teacher_logits.float()", "teacher soft targets not detached"),
    Mutant("giou-cost-sign", D + "logits.py", "cost = cost - giou_cost * generalized_box_iou(",
           "cost = cost + giou_cost * generalized_box_iou(", "GIoU added to the matching cost instead of subtracted"),
    Mutant("logits-class-weight-2", "detrdistill/config.py",
           "    class_weight: float = 1.0\n    bbox_weight: float = 5.0",
           "    class_weight: float = 2.0\n    bbox_weight: float = 5.0", "logits.class_weight default 1 -> 2"),
    Mutant("logits-stage-map-ignored", D + "logits.py", "return x.index_select(0, idx).flatten(0, 1)",
           "return x[-len(stage_map):].flatten(0, 1)", "logits term pairs with the last L_S teacher stages"),
    Mutant("uniform-map-off-by-one", D + "stage_mapping.py",
           "return [((i + 1) * T + S - 1) // S - 1 for i in range(S)]",
           "return [(i * T) // S for i in range(S)]", "'uniform' stage mapping floors instead of ceiling"),
    # ------------------------------------------------------------------ pos_neg
    Mutant("pos-neg-negatives-full-cost", D + "logits.py",
           "cost_neg = match_cost(terms, s_boxes, t_boxes, 1.0, 0.0, 0.0)",
           "cost_neg = match_cost(terms, s_boxes, t_boxes, self.class_cost, self.bbox_cost, self.giou_cost)",
           "pos_neg: negatives matched with the box costs too (Eq. 4 reading: class only)"),
    Mutant("all-class-norm-global", D + "logits.py",
           'cls_norm = n_pos.clamp(min=1) if self.variant == "all" else n_pos_global',
           "cls_norm = n_pos_global",
           "variant 'all' class term normalised by the process-averaged count instead of the local one",
           equivalent="one process: the count averaged over processes IS the local count (both clamped at 1); "
                      "differs only under multi-process training, which no CPU test runs"),
    # ------------------------------------------------------------------ contrastive
    Mutant("contrastive-weight-1", "detrdistill/config.py", "    enabled: bool = False\n    weight: float = 0.2",
           "    enabled: bool = False\n    weight: float = 1.0", "contrastive.weight default 0.2 -> 1"),
    Mutant("contrastive-stage-mean", D + "contrastive.py", "return self.weight * total",
           "return self.weight * total / L_S", "contrastive stages averaged instead of summed"),
    Mutant("contrastive-student-rows", D + "contrastive.py", "logits = (zt @ zs.t())", "logits = (zs @ zt.t())",
           "InfoNCE rows are students instead of teachers"),
    Mutant("contrastive-teacher-not-detached", D + "contrastive.py",
           "matching[l, b_idx, n_idx]].detach().to(head_dtype)", "matching[l, b_idx, n_idx]].to(head_dtype)",
           "teacher embeddings not detached in the contrastive term"),
    # ------------------------------------------------------------------ query prior
    Mutant("query-prior-stage-map-ignored", D + "query_prior.py",
           "assignments = teacher_assignments.index_select(0, idx).to(group.logits.device)",
           "assignments = teacher_assignments[-L_S:].to(group.logits.device)",
           "query prior takes the last L_S teacher stages' assignments"),
    # ------------------------------------------------------------------ batched step matching
    Mutant("step-st-swapped", D + "step_matching.py",
           "student_teacher_costs(s.logits, s.boxes, t.logits, t.boxes, ctx.stage_map,\n"
           "                                               s.class_activation, t.class_activation, *costs)",
           "student_teacher_costs(t.logits, t.boxes, s.logits, s.boxes, ctx.stage_map,\n"
           "                                               t.class_activation, s.class_activation, *costs)",
           "step path: student and teacher swapped in the student-teacher costs"),
    Mutant("step-st-default-costs", D + "step_matching.py", "s.class_activation, t.class_activation, *costs)",
           "s.class_activation, t.class_activation, 1.0, 5.0, 2.0)",
           "step path: the logits term's matching costs ignored"),
    Mutant("step-teacher-gt-student-matcher", D + "step_matching.py",
           "problems.append(_gt_problem(ctx.teacher_matcher, t.logits, t.boxes, padded))",
           "problems.append(_gt_problem(s_matcher or ctx.teacher_matcher, t.logits, t.boxes, padded))",
           "step path: the teacher's GT matching solved with the student criterion's matcher"),
    Mutant("step-student-gt-teacher-outputs", D + "step_matching.py",
           "problems.append(_gt_problem(s_matcher, s.logits, s.boxes, padded))",
           "problems.append(_gt_problem(s_matcher, t.logits, t.boxes, padded))",
           "step path: the student-GT problem built from the teacher's outputs"),
    Mutant("step-gt-valid-order", D + "step_matching.py", "return cost.reshape(L * B, N, -1), None, valid.repeat(L, 1)",
           "return cost.reshape(L * B, N, -1), None, valid.repeat_interleave(L, 0)",
           "step path: GT validity repeated image-major instead of stage-major"),
]


# ----------------------------------------------------------------------------------------------- running
PLUGIN = '''"""pytest plugin of scripts/mutation_check.py: one intra-op thread (set after the tests' conftest)."""
import torch


def pytest_collection_finish(session):
    torch.set_num_threads(1)
'''


def _env(copy: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", COLUMNS="400")
    return env


def make_copy() -> Path:
    copy = Path(tempfile.mkdtemp(prefix="detrdistill-mutation-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "detrdistill", copy / "detrdistill", ignore=ignore)
    shutil.copytree(ROOT / "tests", copy / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "mutation_one_thread.py").write_text(PLUGIN)
    where = subprocess.run([sys.executable, "-c", "import detrdistill; print(detrdistill.__file__)"], cwd=copy,
                           env=_env(copy), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the tests would import {where}, not the copy in {copy}; aborting")
    return copy


def run_tests(copy: Path, tests: list[str]) -> tuple[str, str, str, float]:
    """-> (outcome 'passed' | 'failed' | 'error', first failing test or error line, its message, seconds)."""
    cmd = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-rfE", "-p", "no:cacheprovider",
           "-p", "mutation_one_thread"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "error", f"timeout after {TIMEOUT_S} s", "", time.monotonic() - t0
    seconds = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "passed", "", "", seconds
    m = re.search(r"^(?:FAILED|ERROR) (\S+)(?: - (.*))?$", out, re.M)
    if proc.returncode == 1 and m:
        return "failed", m.group(1), (m.group(2) or "").strip()[:100], seconds
    last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
    return "error", f"pytest exit {proc.returncode}", m.group(1) if m else last[0][:200], seconds


def apply(copy: Path, mutant: Mutant) -> str:
    """Write the mutated file into the copy; -> the pristine text (to restore)."""
    text = (ROOT / mutant.path).read_text()
    n = text.count(mutant.old)
    if n != 1:
        raise SystemExit(f"mutant {mutant.id}: the snippet occurs {n} times in {mutant.path} (expected once)")
    (copy / mutant.path).write_text(text.replace(mutant.old, mutant.new))
    return text


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


# ----------------------------------------------------------------------------------------------- report
def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.split("\\n")[0].replace("|", "\\|").replace("`", "'").replace("\n", " ")


def render(state: dict) -> str:
    meta = state.get("meta", {})
    lines = ["# Mutation check of the distillation formulas", "",
             "Generated by `scripts/mutation_check.py` (each mutant: one edit of a temporary copy of the package; the "
             "working tree is never modified). Runs recorded:", ""]
    for run in meta.get("runs", []):
        lines.append(f"- {run['date']}: `{run['command']}` (commit {run['commit']}, python {run['python']}, "
                     f"{run['seconds']:.0f} s)")
    lines += ["", "Test files, in run order (`pytest -x`: the first failing test is named; one thread):", ""]
    for name, files in SUITES.items():
        lines.append(f"- `{name}`: " + ", ".join(f"`{f}`" for f in files))
    lines += ["", "`new` = every distillation test; `old` = only the tests that existed before "
              "`tests/test_method_reference.py` and `tests/test_step_matching_reference.py`.", ""]
    results = state.get("results", {})
    counts = {s: {"killed": 0, "survived": 0} for s in SUITES}
    lines += ["| # | mutant | file | mutation | `new` suite | `old` suite |", "|---|---|---|---|---|---|"]
    for k, m in enumerate(MUTANTS, 1):
        cells = []
        for suite in ("new", "old"):
            r = results.get(suite, {}).get(m.id)
            if r is None:
                cells.append("not run")
                continue
            if r["outcome"] == "passed":
                counts[suite]["survived"] += 1
                cells.append("**SURVIVED**" + (f" (equivalent: {m.equivalent})" if m.equivalent and suite == "new"
                                               else ""))
            else:
                counts[suite]["killed"] += 1
                test = r["detail"].replace("tests/", "").replace(".py::", "::")
                why = _cell(r.get("why", ""))
                cells.append(f"killed by `{test}`" + (f": {why}" if why else "") if r["outcome"] == "failed"
                             else f"killed ({r['detail']}: {why})")
        review = " (review)" if m.review else ""
        lines.append(f"| {k} | `{m.id}`{review} | `{m.path.replace('detrdistill/', '')}` | {m.what} | "
                     f"{cells[0]} | {cells[1]} |")
    lines += ["", "Totals: " + "; ".join(f"`{s}` suite {c['killed']} killed, {c['survived']} survived"
                                         for s, c in counts.items()) + f" (of {len(MUTANTS)} mutants).", ""]
    new, old = results.get("new", {}), results.get("old", {})
    survivors = [m for m in MUTANTS if new.get(m.id, {}).get("outcome") == "passed"]
    lines += ["## Survivors of the `new` suite", ""]
    lines += [f"- `{m.id}`: " + (f"equivalent -- {m.equivalent}." if m.equivalent else "NOT explained: a test is "
                                 "missing.") for m in survivors] or ["- none"]
    review = [m for m in MUTANTS if m.review]
    old_killed = [m for m in review if old.get(m.id, {}).get("outcome") not in (None, "passed")]
    lines += ["", "## The review's mutations", "",
              f"Rows marked (review) are the {len(review)} mutations an outside review found passing the distillation "
              f"tests, written here as single edits. The `old` column re-runs the tests that existed before the "
              f"method tests: {len(review) - len(old_killed)} of them survive there."]
    for m in old_killed:
        r = old[m.id]
        lines += ["", f"`{m.id}` is killed there by `{r['detail'].replace('tests/', '')}` "
                  f"({_cell(r.get('why', ''))}): a crash, not a value check (the failing case is a student deeper "
                  "than its teacher); the old tests that ran before it, with equal or shallower students, passed."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated mutant ids (default: all)")
    ap.add_argument("--suite", choices=sorted(SUITES), default="new")
    ap.add_argument("--review-only", action="store_true", help="only the mutants the outside review found")
    ap.add_argument("--chunk", default="", help="i/n: only the i-th of n equal slices of the (selected) mutants")
    ap.add_argument("--state", default=str(Path(tempfile.gettempdir()) / "detrdistill-mutation-state.json"))
    ap.add_argument("--out", default="", help="write the Markdown summary of every recorded result here")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--render-only", action="store_true", help="only write --out from the recorded state")
    args = ap.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.id:36s} {m.path:45s} {m.what}")
        return 0
    ids = {m.id for m in MUTANTS}
    if len(ids) != len(MUTANTS):
        raise SystemExit("duplicate mutant ids")
    chosen = [m for m in MUTANTS
              if (not args.only or m.id in args.only.split(",")) and (m.review or not args.review_only)]
    if args.chunk:
        i, n = (int(v) for v in args.chunk.split("/"))
        size = -(-len(chosen) // n)
        chosen = chosen[(i - 1) * size:i * size]
    unknown = set(filter(None, args.only.split(","))) - ids
    if unknown:
        raise SystemExit(f"unknown mutant ids: {sorted(unknown)}")
    state_path = Path(args.state)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if args.render_only:
        if not args.out:
            raise SystemExit("--render-only needs --out")
        Path(args.out).write_text(render(state))
        return 0
    tests = SUITES[args.suite]
    t_start = time.monotonic()
    copy = make_copy()
    try:
        outcome, detail, why, secs = run_tests(copy, tests)
        print(f"baseline ({args.suite}): {outcome} {detail} {why} [{secs:.0f} s]", flush=True)
        if outcome != "passed":
            raise SystemExit("the unmutated copy does not pass its tests; fix that first")
        for m in chosen:
            pristine = apply(copy, m)
            try:
                outcome, detail, why, secs = run_tests(copy, tests)
            finally:
                (copy / m.path).write_text(pristine)
            verdict = "SURVIVED" if outcome == "passed" else "killed"
            print(f"{m.id:36s} {verdict:8s} {detail} {why} [{secs:.0f} s]", flush=True)
            state.setdefault("results", {}).setdefault(args.suite, {})[m.id] = {
                "outcome": outcome, "detail": detail, "why": why, "seconds": round(secs, 1)}
            state_path.write_text(json.dumps(state, indent=1))
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    dirty = " (dirty)" if git("status", "--porcelain", "--", "detrdistill", "tests") else ""
    run = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": git("rev-parse", "--short", "HEAD") + dirty,
           "python": sys.version.split()[0], "seconds": time.monotonic() - t_start,
           "command": "scripts/mutation_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    state.setdefault("meta", {}).setdefault("runs", []).append(run)
    state_path.write_text(json.dumps(state, indent=1))
    if args.out:
        Path(args.out).write_text(render(state))
        print(f"wrote {args.out}")
    survivors = [m.id for m in chosen if state["results"][args.suite][m.id]["outcome"] == "passed"
                 and not m.equivalent and args.suite == "new"]
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
