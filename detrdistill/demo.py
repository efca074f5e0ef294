"""``detrdistill demo``: the whole story on the synthetic shapes set, nothing to download.

1. generate the synthetic COCO set; 2. train a teacher; 3. train the student alone (baseline);
4. distil the same student from the teacher (all three DETRDistill parts); 5. evaluate, print a
comparison table and write figures (predictions, the feature-distillation mask, loss curves).

Presets: ``cpu`` (tiny models; its reference figures and time: ``detrdistill/demo_reference.json``, the README's
demo table) and ``gpu`` (bigger images, models and schedules); ``auto`` picks ``gpu`` when CUDA is available.
Finished stages are reused when the command is run again with the same output directory and config (seed included);
an unfinished one is resumed. The printed table has the reference's AP beside this run's
(:mod:`detrdistill.demo_reference`).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from detrdistill.config import Config, load_config
from detrdistill.io_atomic import write_atomic

log = logging.getLogger("detrdistill")

# per preset: shared overrides, teacher-only, student-only, steps
PRESETS = {
    "cpu": {
        "common": ["data.synthetic=true", "data.synth_images=320", "data.synth_size=128", "data.min_size=[112,128]",
                   "data.max_size=128", "data.eval_size=128", "data.crop=0.0", "data.num_workers=0",
                   "model.num_queries=30", "model.decoder_layers=3", "model.encoder_layers=1",
                   "model.num_feature_levels=3", "model.with_box_refine=true", "optim.lr=1e-3", "optim.backbone_lr_mult=1.0",
                   "optim.warmup_steps=20", "optim.grad_clip=1.0", "train.batch_size=8", "train.log_every=5",
                   "train.eval_every_epochs=0", "train.device=cpu"],
        "teacher": ["model.d_model=64", "model.ffn_dim=256", "model.num_heads=4", "model.backbone.embedding_size=16",
                    "model.backbone.hidden_sizes=[16,32,64,128]", "model.backbone.depths=[1,1,1,1]",
                    "train.max_steps=1500"],
        "student": ["model.d_model=32", "model.ffn_dim=128", "model.num_heads=4", "model.backbone.embedding_size=8",
                    "model.backbone.hidden_sizes=[8,16,32,64]", "model.backbone.depths=[1,1,1,1]",
                    "train.max_steps=1000"],
    },
    "gpu": {
        "common": ["data.synthetic=true", "data.synth_images=800", "data.synth_size=256",
                   "data.min_size=[224,256,288]", "data.max_size=320", "data.eval_size=256", "data.crop=0.3",
                   "data.num_workers=4", "model.num_queries=100", "model.decoder_layers=6", "model.encoder_layers=2",
                   "model.num_feature_levels=4", "model.with_box_refine=true", "optim.lr=4e-4", "optim.backbone_lr_mult=1.0",
                   "optim.warmup_steps=100", "optim.grad_clip=0.1", "train.batch_size=16", "train.log_every=20",
                   "train.eval_every_epochs=10", "train.mixed_precision=bf16"],
        "teacher": ["model.d_model=256", "model.ffn_dim=1024", "model.num_heads=8",
                    "model.backbone.hidden_sizes=[64,128,256,512]", "model.backbone.depths=[2,2,2,2]",
                    "train.max_steps=3000"],
        "student": ["model.d_model=128", "model.ffn_dim=512", "model.num_heads=4", "model.backbone.embedding_size=32",
                    "model.backbone.hidden_sizes=[32,64,128,256]", "model.backbone.depths=[1,1,1,1]",
                    "train.max_steps=2000"],
    },
    # seconds-long pipeline check (tests): same steps as the real presets, nothing learned
    "smoke": {
        "common": ["data.synthetic=true", "data.synth_images=16", "data.synth_size=64", "data.min_size=[64]",
                   "data.max_size=64", "data.eval_size=64", "data.crop=0.0", "data.num_workers=0",
                   "model.num_queries=10", "model.decoder_layers=2", "model.encoder_layers=1",
                   "model.num_feature_levels=2", "model.backbone.embedding_size=8",
                   "model.backbone.hidden_sizes=[8,16,32,64]", "model.backbone.depths=[1,1,1,1]",
                   "train.batch_size=4", "train.log_every=1", "train.eval_every_epochs=0", "train.device=cpu",
                   "train.progress=false", "train.max_steps=3"],
        "teacher": ["model.d_model=64", "model.ffn_dim=64", "model.num_heads=2"],
        "student": ["model.d_model=32", "model.ffn_dim=64", "model.num_heads=2"],
    },
}


def demo_configs(output_dir: str | Path, preset: str, seed: int = 0) -> dict[str, Config]:
    """The three run configs (teacher, baseline, distilled) of a preset; ``seed`` is every run's ``train.seed``
    (the synthetic data set stays the same, so seeds differ only in training randomness)."""
    out = Path(output_dir)
    p = PRESETS[preset]
    common = p["common"] + [f"data.synth_dir={out / 'data'}", f"train.seed={seed}"]
    teacher = load_config(None, common + p["teacher"] + [f"train.output_dir={out / 'teacher'}"])
    baseline = load_config(None, common + p["student"] + [f"train.output_dir={out / 'baseline'}"])
    distilled = load_config(None, common + p["student"] + [f"train.output_dir={out / 'distilled'}",
                                                           f"distill.teacher={out / 'teacher' / 'model'}"])
    return {"teacher": teacher, "baseline": baseline, "distilled": distilled}


def _done(cfg: Config) -> bool:
    """The stage finished with exactly this config (another seed or preset in the same folder is not reused)."""
    import yaml

    out = Path(cfg.train.output_dir)
    if not ((out / "eval.json").is_file() and (out / "model" / "config.json").is_file() and (out / "config.yaml").is_file()):
        return False
    if json.loads((out / "eval.json").read_text()).get("stopped_early", False):
        return False
    return yaml.safe_load((out / "config.yaml").read_text()) == cfg.model_dump(mode="json")


def run_demo(output_dir: str | Path = "runs/demo", preset: str = "auto", seed: int = 0,
             threads: int | None = None) -> dict:
    """Run (or reuse) the three stages of ``preset`` with ``train.seed=seed``; ``threads`` fixes torch's CPU thread
    count (None: torch's default). Returns the summary also written to ``<output_dir>/summary.json``."""
    from detrdistill.output_folder import claim_output

    if preset == "auto":
        preset = "gpu" if torch.cuda.is_available() else "cpu"
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(output_dir)
    with claim_output(out, (), "--output-dir"):  # one demo per folder at a time
        return _run_demo(out, preset, seed)


def _run_demo(out: Path, preset: str, seed: int = 0) -> dict:
    from detrdistill.distillation.task import DistillTask
    from detrdistill.engine.tasks import DetectionTask
    from detrdistill.engine.trainer import run_training
    from detrdistill.models.build import count_parameters, load_detector

    cfgs = demo_configs(out, preset, seed)
    tasks = {"teacher": DetectionTask, "baseline": DetectionTask, "distilled": DistillTask}
    from detrdistill.machine import code_version, cpu_flags, device_name, library_versions

    summary = {"preset": preset, "seed": seed, "threads": torch.get_num_threads(), "device": device_name(),
               "cpu_flags": cpu_flags(), "versions": library_versions(), "code": code_version(), "runs": {}}
    t_start = time.monotonic()
    for i, (name, cfg) in enumerate(cfgs.items(), 1):
        print(f"[{i}/3] {name}: {tasks[name].name} -> {cfg.train.output_dir}", flush=True)
        t0 = time.monotonic()
        if _done(cfg):
            print("      already done, reusing it", flush=True)
        else:
            # continue an unfinished stage; a fresh one starts without a --resume warning
            from detrdistill.engine.run_dir import holds_run
            run_training(cfg, tasks[name], resume=holds_run(Path(cfg.train.output_dir)))
        stats = json.loads((Path(cfg.train.output_dir) / "eval.json").read_text())
        model = load_detector(Path(cfg.train.output_dir) / "model")
        summary["runs"][name] = {"AP": stats["AP"], "AP50": stats["AP50"], "AP75": stats["AP75"],
                                 "params": count_parameters(model).total, "train_seconds": stats.get("train_seconds"),
                                 "wall_seconds": round(time.monotonic() - t0, 1)}
    summary["figures"] = _figures(out, cfgs)
    summary["total_seconds"] = round(time.monotonic() - t_start, 1)
    from detrdistill.demo_reference import load_reference
    reference = load_reference()
    table = format_table(summary, reference)
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    write_atomic(out / "summary.md", table + "\n")
    print("\n" + table)
    note = reference_note(summary, reference)
    if note:
        print("\n" + note)
    print("\nfigures:")
    for f in summary["figures"]:
        print(f"  {f}")
    return summary


# how the runs are named to a reader: the printout, the figures and the README use the same words
DISPLAY_NAMES = {"teacher": "teacher", "baseline": "student alone", "distilled": "student distilled"}


def format_table(summary: dict, reference: dict | None = None) -> str:
    """This run's table; with a ``reference`` of the same preset (:mod:`detrdistill.demo_reference`), a last column
    with the README's reference AP (mean ± std over its seeds, and its value for this run's seed)."""
    from detrdistill.demo_reference import reference_cells

    runs = summary["runs"]
    base = runs.get("baseline", {}).get("AP")
    cells = reference_cells(reference, summary.get("seed")) if _comparable(summary, reference) else None
    head = "| model | params | AP | AP50 | AP75 | AP vs student alone | train seconds |"
    rule = "|---|---|---|---|---|---|---|"
    if cells:
        n = len(reference["seeds"])
        head, rule = head + f" README reference AP ({n} seeds) |", rule + "---|"
    lines = [head, rule]
    for name, r in runs.items():
        gain = "" if base is None or name == "baseline" else f"{r['AP'] - base:+.2f}"
        lines.append(f"| {DISPLAY_NAMES.get(name, name)} | {r['params'] / 1e6:.2f} M | {r['AP']:.2f} | {r['AP50']:.2f} | {r['AP75']:.2f} | "
                     f"{gain} | {r['train_seconds'] or 0:.0f} |" + (f" {cells.get(name, '')} |" if cells else ""))
    return "\n".join(lines)


def _comparable(summary: dict, reference: dict | None) -> bool:
    return reference is not None and reference.get("preset") == summary.get("preset")


def reference_note(summary: dict, reference: dict | None) -> str:
    """What the reference column is, how it was measured, and this run's time and threads beside it."""
    if reference is None:
        return ""
    from detrdistill.demo_reference import idle_sentence, pm, reference_stats
    from detrdistill.engine.run_summary import duration
    from detrdistill.machine import differences

    if not _comparable(summary, reference):
        return (f"README reference figures are for --preset {reference['preset']}; this run used --preset "
                f"{summary.get('preset')}, not comparable")
    wall = pm(reference_stats(reference)["wall_min"], ".1f")
    here = summary.get("total_seconds")
    threads = summary.get("threads")
    differ = differences(summary, reference)
    if differ:
        same = (f"; it differs from the reference in {'; '.join(differ)}, so expect other figures than its seed's, "
                "as from another seed")
    elif summary.get("device"):
        same = "; the reference's device model, versions and threads, so its seed's figures should be equal"
    else:
        same = ""
    return (f"README reference: `{reference['command']}`, seeds {', '.join(sorted(reference['seeds'], key=int))}, "
            f"{reference['threads']} thread{'s' if reference['threads'] != 1 else ''}, {reference['date']}; "
            f"{wall} min per seed on {reference['device']} under load ({reference['load']})"
            f"{'; ' + idle_sentence(reference) if reference.get('idle') else '.'} "
            f"This run: {duration(here)}{' (stages reused)' if _reused(summary) else ''}, {threads} thread"
            f"{'s' if threads != 1 else ''}{same}.")


def _reused(summary: dict) -> bool:
    return any((r.get("wall_seconds") or 0) < 0.5 * (r.get("train_seconds") or 0) for r in summary["runs"].values())


def _figures(out: Path, cfgs: dict[str, Config]) -> list[str]:
    from detrdistill.engine.setup import build_datasets, make_accelerator
    from detrdistill.models.families import get_adapter
    from detrdistill.models.build import load_detector
    from detrdistill.viz import plot_feature_mask, plot_loss_curves, plot_predictions

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    cfg = cfgs["teacher"]
    _, val = build_datasets(cfg, make_accelerator(cfg), need_train=False)
    models = {DISPLAY_NAMES.get(n, n): get_adapter(load_detector(Path(c.train.output_dir) / "model"))
              for n, c in cfgs.items()}
    idx = list(range(min(4, len(val))))
    paths = [plot_predictions(models, val, idx, fig_dir / "predictions.png"),
             plot_feature_mask(models[DISPLAY_NAMES["teacher"]], val, 0, fig_dir / "feature_mask.png",
                               source=cfgs["distilled"].distill.feature.source),
             plot_loss_curves({DISPLAY_NAMES[n]: Path(cfgs[n].train.output_dir) / "metrics.jsonl"
                               for n in ("baseline", "distilled")},
                              fig_dir / "loss_curves.png")]
    return [str(p) for p in paths]
