"""``detrdistill`` command line: train, distill, eval, predict, export, demo, data validate / synth.

Every subcommand that takes a config accepts ``--set key=value`` (repeatable) overrides, e.g.
``detrdistill train configs/bccd_teacher.yaml --set train.epochs=20 --set optim.lr=1e-4``.
Problems with the config, the data or a checkpoint end with one ``error:`` line (``--debug`` shows
the traceback).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def embedded_config(name: str) -> Path:
    """Path of a config shipped inside the package (``detrdistill/configs/<name>.yaml``)."""
    return Path(str(resources.files("detrdistill") / "configs" / f"{name}.yaml"))


def _load(args) -> "Config":  # noqa: F821
    from detrdistill.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "output_dir", None):
        overrides.append(f"train.output_dir={args.output_dir}")
    if getattr(args, "teacher", None):
        overrides.append(f"distill.teacher={args.teacher}")
    return load_config(args.config or embedded_config("synthetic"), overrides)


def cmd_train(args) -> int:
    from detrdistill.engine.trainer import run_training
    run_training(_load(args), mode="train", resume=args.resume)
    return 0


def cmd_distill(args) -> int:
    from detrdistill.engine.trainer import run_training
    cfg = _load(args)
    if not cfg.distill.teacher:
        raise ValueError("distill: no teacher; pass --teacher DIR or set distill.teacher in the config")
    run_training(cfg, mode="distill", resume=args.resume)
    return 0


def cmd_eval(args) -> int:
    from detrdistill.engine.evaluate_run import run_evaluation
    cfg = _load(args)
    model_dir = args.model or str(Path(cfg.train.output_dir) / "model")
    run_evaluation(cfg, model_dir, split=args.split, output_dir=args.eval_dir)
    return 0


def cmd_predict(args) -> int:
    from detrdistill.predict import predict
    result = predict(args.model, args.inputs, args.out, threshold=args.threshold)
    print(f"{len(result.images)} images, {result.num_detections} detections -> {result.predictions_file.parent}")
    return 0


def cmd_export(args) -> int:
    from detrdistill.export.onnx_export import export_model_dir
    from detrdistill.predict import resolve_model_dir
    result = export_model_dir(resolve_model_dir(args.model), args.out, height=args.height, width=args.width,
                              opset=args.opset, check=not args.no_check)
    diff = result["max_abs_diff"]
    checked = "" if diff is None else " (onnxruntime vs PyTorch: max |diff| " + \
        ", ".join(f"{k} {v:.1e}" for k, v in diff.items()) + ")"
    print(f"wrote {result['path']}; inputs {', '.join(result['inputs'])}{checked}")
    return 0


def cmd_demo(args) -> int:
    from detrdistill.demo import run_demo
    run_demo(output_dir=args.output_dir, preset=args.preset)
    return 0


def cmd_data_validate(args) -> int:
    from detrdistill.data import validate_coco
    report = validate_coco(args.ann_file, args.images, check_images=not args.no_images)
    print(report.format())
    return 1 if report.errors else 0


def cmd_data_synth(args) -> int:
    from detrdistill.data import make_synthetic_coco
    paths = make_synthetic_coco(args.out_dir, num_train=args.train_images, num_val=args.val_images,
                                size=args.size, seed=args.seed)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option's help, except unset (None) and off (False) defaults."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from detrdistill import __version__

    p = _Parser(prog="detrdistill", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="debug-level log messages")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(sp, default_note="the embedded synthetic config"):
        sp.add_argument("config", nargs="?", help=f"YAML config (default: {default_note})")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        sp.add_argument("--output-dir", help="shortcut for --set train.output_dir=...")

    sp = sub.add_parser("train", help="train a detector (teacher or student baseline)")
    with_config(sp)
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("distill", help="train a student under a frozen teacher (DETRDistill)")
    with_config(sp)
    sp.add_argument("--teacher", help="teacher model directory (shortcut for --set distill.teacher=...)")
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    sp.set_defaults(func=cmd_distill)

    sp = sub.add_parser("eval", help="COCO mAP of a model directory; writes <output_dir>/eval.json")
    with_config(sp)
    sp.add_argument("--model", help="model directory (default <output_dir>/model)")
    sp.add_argument("--split", default="val", choices=["val", "test"], help="which data split to score")
    sp.add_argument("--eval-dir", help="where eval.json goes (default output_dir)")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("predict", help="draw a model's detections on images; writes PNGs + predictions.json")
    sp.add_argument("model", help="model directory (a run's model/ folder, or the run folder)")
    sp.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images, or folders of images")
    sp.add_argument("--out", required=True, help="output folder for <image>.png and predictions.json")
    sp.add_argument("--threshold", type=float, default=0.5, help="lowest score drawn and saved")
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("export", help="export a model directory (ONNX), checked against PyTorch")
    sp.add_argument("model", help="model directory (a run's model/ folder, or the run folder)")
    sp.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    sp.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    sp.add_argument("--height", type=int, default=320, help="traced input height (the graph takes any multiple of 32)")
    sp.add_argument("--width", type=int, default=320, help="traced input width (the graph takes any multiple of 32)")
    sp.add_argument("--opset", type=int, default=17, help="ONNX opset")
    sp.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("demo", help="synthetic data -> teacher, student baseline, distilled student, comparison")
    sp.add_argument("--output-dir", default="runs/demo", help="where the demo's runs and figures go")
    sp.add_argument("--preset", choices=["auto", "cpu", "gpu", "smoke"], default="auto",
                    help="model/schedule sizes: cpu (~10 min on 2 cores), gpu, smoke (seconds, checks the pipeline)")
    sp.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True,
                                                                       parser_class=_Parser)
    sp = data.add_parser("validate", help="report every defect of a COCO dataset")
    sp.add_argument("ann_file", help="COCO annotation JSON")
    sp.add_argument("--images", required=True, help="image folder")
    sp.add_argument("--no-images", action="store_true", help="skip opening image files")
    sp.set_defaults(func=cmd_data_validate)
    sp = data.add_parser("synth", help="generate the synthetic COCO dataset")
    sp.add_argument("out_dir", help="folder for images/, train.json and val.json")
    sp.add_argument("--train-images", type=int, default=160, help="number of training images")
    sp.add_argument("--val-images", type=int, default=40, help="number of validation images")
    sp.add_argument("--size", type=int, default=256, help="image side in pixels")
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    sp.set_defaults(func=cmd_data_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    from detrdistill.errors import DetrDistillError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "transformers", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:  # transformers' own "Loading weights" / "Writing model shards" bars
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        return args.func(args)
    except (DetrDistillError, ValueError, FileNotFoundError, RuntimeError, NotImplementedError) as e:
        if args.debug:
            raise
        from detrdistill.config import ConfigError
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if isinstance(e, ConfigError) else "  (--debug shows the traceback)"
        print(f"error: {msg}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
