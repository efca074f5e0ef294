"""``detrdistill`` command line: train, distill, eval, predict, export, demo, data validate / synth.

Every subcommand that takes a config accepts ``--set key=value`` (repeatable) overrides, e.g.
``detrdistill train configs/bccd_teacher.yaml --set train.epochs=20 --set optim.lr=1e-4``.
Problems with the config, the data or a checkpoint end with one ``error:`` line (``--debug``, anywhere
on the command line, shows the traceback). Exit codes: 0 done, 1 ``data validate`` found defects or
``predict`` skipped unreadable input files (one warning each; the rest was predicted and written), 2 error,
130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config module imports pydantic: kept off the path of ``--help``
    from detrdistill.config import Config



def embedded_config(name: str) -> Path:
    """Path of a config shipped inside the package (``detrdistill/configs/<name>.yaml``)."""
    return Path(str(resources.files("detrdistill") / "configs" / f"{name}.yaml"))


def _load(args) -> Config:
    """The validated config of a command (read once; ``main`` reads it before torch is imported)."""
    if getattr(args, "_cfg", None) is None:
        args._cfg, args._origins = _load_with_origins(args)
    return args._cfg


def _load_with_origins(args):
    cfg, origins = _read_config(args)
    _check_family(cfg, origins)
    return cfg, origins


def _check_family(cfg, origins) -> None:
    """``model.family`` checked by the models layer (light: no torch), the error naming where the key was set."""
    from detrdistill.errors import ConfigError, UnsupportedFamilyError
    from detrdistill.models.family_index import check_family

    try:
        check_family(cfg.model.family)
    except UnsupportedFamilyError as e:
        raise ConfigError(f"{origins.describe(('model', 'family'))}: model.family: {e}") from None


def _read_config(args):
    from detrdistill.config import load_config_with_origins

    overrides = list(args.set or [])
    labels = [f"--set {s}" for s in overrides]
    if getattr(args, "output_dir", None):
        overrides.append(f"train.output_dir={args.output_dir}")
        labels.append(f"--output-dir {args.output_dir}")
    if getattr(args, "teacher", None):
        overrides.append(f"distill.teacher={args.teacher}")
        labels.append(f"--teacher {args.teacher}")
    if args.config:
        if "=" in args.config and not Path(args.config).exists():  # `--set a=1 b=2`: b=2 landed in CONFIG
            from detrdistill.errors import ConfigError
            raise ConfigError(f"{args.config}: config file not found; it reads as a KEY=VALUE override, and each "
                              f"--set takes one: write --set {args.config}")
        return load_config_with_origins(args.config, overrides, labels)
    return load_config_with_origins(embedded_config("synthetic"), overrides, labels,
                                    name="embedded detrdistill/configs/synthetic.yaml")


def _check_named_models(args) -> None:
    """A model the run names by a local-looking path that does not exist: one line now, before data or torch."""
    from detrdistill.models.pretrained import check_local_model

    cfg = args._cfg
    named = {"model.pretrained": cfg.model.pretrained, "model.backbone.pretrained": cfg.model.backbone.pretrained}
    if args.command == "distill":
        named["distill.teacher"] = cfg.distill.teacher
    for what, name in named.items():
        if name:
            check_local_model(name, what)


def cmd_config_show(args) -> int:
    from detrdistill.config_show import render_config
    _load(args)
    sys.stdout.write(render_config(args._cfg, args._origins))
    return 0


def cmd_train(args) -> int:
    from detrdistill.engine.tasks import DetectionTask
    from detrdistill.engine.trainer import run_training
    run_training(_load(args), DetectionTask, resume=args.resume, overwrite=args.overwrite)
    return 0


def _output_dir_given(args) -> bool:
    return bool(args.output_dir) or any(s.split("=", 1)[0].strip() == "train.output_dir" for s in args.set or [])


def cmd_distill(args) -> int:
    from detrdistill.distillation.task import DistillTask
    from detrdistill.engine.trainer import run_training
    from detrdistill.errors import ConfigError
    cfg = _load(args)
    if not cfg.distill.teacher:
        raise ConfigError("distill: no teacher; pass --teacher DIR_OR_HUB_ID or set distill.teacher in the config")
    if args.config is None and not _output_dir_given(args):  # never the folder `train` uses by default
        from detrdistill.engine.run_dir import distill_default_output_dir
        cfg.train.output_dir = distill_default_output_dir(cfg.train.output_dir)
    run_training(cfg, DistillTask, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_eval(args) -> int:
    from detrdistill.engine.evaluate_run import run_evaluation
    cfg = _load(args)
    model_dir = args.model or str(Path(cfg.train.output_dir) / "model")
    run_evaluation(cfg, model_dir, split=args.split, output_dir=args.eval_dir)
    return 0


def cmd_predict(args) -> int:
    from detrdistill.predict import predict
    result = predict(args.model, args.inputs, args.out, threshold=args.threshold, ann=args.ann)
    skipped = f"; {len(result.skipped)} skipped (unreadable, see the warnings)" if result.skipped else ""
    print(f"{len(result.images)} images, {result.num_detections} detections -> "
          f"{result.predictions_file.parent}{skipped}")
    if result.stats is not None:
        from detrdistill.engine.evaluator import STAT_KEYS
        shown = (f"{k} {result.stats[k]:.2f}" if k in result.stats else f"{k} n/a" for k in STAT_KEYS)
        print("COCO bbox (" + args.ann + "): " + ", ".join(shown))
    return 1 if result.skipped else 0


def cmd_export(args) -> int:
    from detrdistill.export.onnx_export import export_model_dir
    from detrdistill.predict import resolve_model_dir
    result = export_model_dir(resolve_model_dir(args.model), args.out, height=args.height, width=args.width,
                              opset=args.opset, check=not args.no_check)
    diff = result["max_abs_diff"]
    checked = "" if diff is None else " (onnxruntime vs PyTorch: max |diff| " + \
        ", ".join(f"{k} {v:.1e}" for k, v in diff.items()) + ")"
    size = result["input_size"]
    fixed = "" if size is None else f" (static size {size[0]}x{size[1]})"
    print(f"wrote {result['path']}; inputs {', '.join(result['inputs'])}{fixed}{checked}")
    return 0


def cmd_demo(args) -> int:
    from detrdistill.demo import run_demo
    run_demo(output_dir=args.output_dir, preset=args.preset, seed=args.seed, threads=args.threads)
    return 0


def cmd_data_validate(args) -> int:
    from detrdistill.data import validate_coco
    if args.images is None and not args.no_images:
        args.usage_error("the following arguments are required: --images (the image folder; --no-images checks "
                         "the json alone)")
    report = validate_coco(args.ann_file, args.images or ".", check_images=not args.no_images, progress=True)
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


def _with_config(sp, default_note="the embedded synthetic config"):
    sp.add_argument("config", nargs="?", help=f"YAML config (default: {default_note})")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config key (repeatable; `detrdistill config show` lists every key)")
    sp.add_argument("--output-dir", help="shortcut for --set train.output_dir=...")
    sp.set_defaults(takes_config=True)  # validated before torch is imported


def _run_flags(sp):
    sp.add_argument("--resume", action="store_true",
                    help="continue the run in output_dir (only the training length may change)")
    sp.add_argument("--overwrite", action="store_true", help="replace a run already in output_dir")


def _add_training_commands(sub) -> None:
    sp = sub.add_parser("train", help="train a detector (teacher or student baseline)")
    _with_config(sp)
    _run_flags(sp)
    sp.set_defaults(func=cmd_train, trains=True)

    sp = sub.add_parser("distill", help="train a student under a frozen teacher (DETRDistill); without a config "
                        "file or --output-dir it writes to runs/synthetic_distill")
    _with_config(sp)
    sp.add_argument("--teacher", help="teacher: a model directory or a Hugging Face hub id (org/name) "
                    "(shortcut for --set distill.teacher=...; honours HF_HUB_OFFLINE)")
    _run_flags(sp)
    sp.set_defaults(func=cmd_distill, trains=True)

    sp = sub.add_parser("eval", help="COCO mAP of a model directory; writes <output_dir>/eval.json")
    _with_config(sp)
    sp.add_argument("--model", help="model directory (default <output_dir>/model), or an exported .onnx file "
                    "(run by onnxruntime; its resize is read from the file's metadata)")
    sp.add_argument("--split", default="val", choices=["val", "test"], help="which data split to score")
    sp.add_argument("--eval-dir", help="where eval.json goes (default output_dir)")
    sp.set_defaults(func=cmd_eval)


def _add_model_tools(sub) -> None:
    sp = sub.add_parser("predict", help="draw a model's detections on images; writes PNGs + predictions.json")
    sp.add_argument("model", help="model directory (a run's model/ folder, or the run folder), hub id, or an "
                    "exported .onnx file (run by onnxruntime)")
    sp.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                    help="images, folders of images, quoted glob patterns ('photos/*.jpg'), or .txt files listing "
                    "one image path per line; unreadable files are skipped with a warning (exit code 1)")
    sp.add_argument("--out", required=True, help="output folder for <image>.png and predictions.json")
    sp.add_argument("--threshold", type=float, default=0.5, help="lowest score drawn and saved")
    sp.add_argument("--ann", help="COCO json of the images: predictions.json gets the dataset's image_id and "
                    "category_id, and the COCO stats of the saved predictions are printed (--threshold 0 to score "
                    "as eval does)")
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("export", help="export a model directory (ONNX), checked against PyTorch")
    sp.add_argument("model", help="model directory (a run's model/ folder, or the run folder) or hub id")
    sp.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    sp.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    sp.add_argument("--height", type=int, help="traced input height (default 320; the graph takes any multiple of "
                    "32, except a static-size family's: only its processor's square pad, the default there)")
    sp.add_argument("--width", type=int, help="traced input width (default 320; as --height)")
    sp.add_argument("--opset", type=int, default=17, help="ONNX opset")
    sp.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("demo", help="synthetic data -> teacher, student baseline, distilled student, comparison")
    sp.add_argument("--output-dir", default="runs/demo", help="where the demo's runs and figures go")
    sp.add_argument("--preset", choices=["auto", "cpu", "gpu", "smoke"], default="auto",
                    help="model/schedule sizes: cpu (its time and figures: the README's demo table), gpu, "
                    "smoke (seconds, checks the pipeline)")
    sp.add_argument("--seed", type=int, default=0, help="train.seed of the three runs (the data set stays the same)")
    sp.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    sp.set_defaults(func=cmd_demo)


def _add_config_commands(sub) -> None:
    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="config_command", required=True,
                                                                            parser_class=_Parser)
    sp = config.add_parser("show", help="print the resolved config as YAML, every key with its meaning, default and "
                           "where its value came from (file:line or --set)")
    _with_config(sp)
    sp.set_defaults(func=cmd_config_show, light=True)


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True,
                                                                       parser_class=_Parser)
    sp = data.add_parser("validate", help="report every defect of a COCO dataset (every image decoded fully, "
                         "as training reads it); exit 1 when there are defects other than warnings")
    sp.add_argument("ann_file", help="COCO annotation JSON")
    sp.add_argument("--images", help="image folder (required unless --no-images)")
    sp.add_argument("--no-images", action="store_true", help="check the json alone: no image file is opened")
    sp.set_defaults(func=cmd_data_validate, usage_error=sp.error)
    sp = data.add_parser("synth", help="generate the synthetic COCO dataset")
    sp.add_argument("out_dir", help="folder for images/, train.json and val.json")
    sp.add_argument("--train-images", type=int, default=160, help="number of training images")
    sp.add_argument("--val-images", type=int, default=40, help="number of validation images")
    sp.add_argument("--size", type=int, default=256, help="image side in pixels")
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    sp.set_defaults(func=cmd_data_synth)


def build_parser() -> argparse.ArgumentParser:
    from detrdistill import __version__

    p = _Parser(prog="detrdistill", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="debug-level log messages")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_training_commands(sub)
    _add_model_tools(sub)
    _add_data_commands(sub)
    _add_config_commands(sub)
    return p


def _global_flags(argv: list[str]) -> tuple[list[str], bool, bool]:
    """Take ``--debug`` / ``-v`` / ``--verbose`` from anywhere before a ``--``: (rest, debug, verbose)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    head, tail = argv[:cut], argv[cut:]
    debug, verbose = "--debug" in head, "-v" in head or "--verbose" in head
    return [a for a in head if a not in ("--debug", "-v", "--verbose")] + tail, debug, verbose


def main(argv: list[str] | None = None) -> int:
    argv, debug, verbose = _global_flags(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sets = [a for a in extra if "=" in a and not a.startswith("-")]
        hint = (f"; each --set takes one KEY=VALUE: write {' '.join('--set ' + a for a in sets)}"
                if sets and getattr(args, "takes_config", False) else "")
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    args.debug, args.verbose = debug, verbose
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "transformers", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from detrdistill.errors import ConfigError, DetrDistillError

    try:
        if getattr(args, "takes_config", False):
            _load(args)  # a config mistake is reported before torch / transformers are imported (well under a second)
        if getattr(args, "trains", False):
            _check_named_models(args)  # so is a model path that does not exist (no hub lookup for it)
        if not getattr(args, "light", False):
            _quiet_transformers()
        return args.func(args)
    except KeyboardInterrupt:  # a second Ctrl-C (the first one stops cleanly with a checkpoint)
        if args.debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except (DetrDistillError, OSError) as e:  # deliberate errors and OS failures: one line; bugs surface
        if args.debug or (not isinstance(e, DetrDistillError) and e.errno is None):
            raise
        if isinstance(e, DetrDistillError):
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        else:  # full disk, permissions, ...
            from detrdistill.os_errors import describe_os_error
            msg = describe_os_error(e)
        from detrdistill.engine.interrupt import TrainingInterrupted  # light: signal and errors only
        interrupted = isinstance(e, TrainingInterrupted)
        hint = "" if isinstance(e, ConfigError) or interrupted else "  (--debug shows the traceback)"
        print(f"error: {msg}{hint}", file=sys.stderr)
        return e.exit_code if interrupted else 2


def _quiet_transformers() -> None:
    """transformers' own "Loading weights" / "Writing model shards" bars off (imports transformers)."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())
