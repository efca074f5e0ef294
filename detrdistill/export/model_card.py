"""A short model card (``README.md``) for an exported model directory: data, config, eval stats, teacher."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from detrdistill.config import Config

STAT_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def count_saved_parameters(model_dir: str | Path) -> int | None:
    """Number of values in ``model.safetensors`` (None when absent)."""
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def _labels(model_dir: Path) -> list[str]:
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        return []
    id2label = json.loads(cfg_file.read_text()).get("id2label", {})
    return [id2label[k] for k in sorted(id2label, key=int)]


def _registration_lines(family: str) -> list[str]:
    """For a family whose classes are the project's own (``FamilySpec.auto_classes``): the explicit call that
    registers them with transformers before ``pipeline`` (no remote code)."""
    from detrdistill.models.families import family_spec

    fn = family_spec(family).auto_classes
    if fn is None:
        return []
    return [f"from {fn.__module__} import {fn.__name__}",
            f"{fn.__name__}()  # transformers learns the {family} classes from detrdistill (no remote code)"]


def _split_line(name: str, split) -> str:
    return f"- {name}: `{split.ann_file}` (images `{split.image_dir}`)" if split is not None else ""


def render_model_card(cfg: Config, model_dir: str | Path, stats: dict | None,
                      inputs: Sequence[tuple[str, str, str]] = ()) -> str:
    """Markdown text of the card. ``stats``: final eval stats (AP in %) or None; ``inputs``: ``(what, config key,
    model name)`` of the models the run learned from besides its data (a teacher; the task's inputs)."""
    model_dir = Path(model_dir)
    m, d = cfg.model, cfg.data
    labels = _labels(model_dir)
    params = count_saved_parameters(model_dir)
    how = "distilled from " + ", ".join(f"a {what}" for what, _, _ in inputs) if inputs else "trained alone"
    lines = [f"# {model_dir.parent.name or 'detrdistill model'}", "",
             f"A `{m.family}` object detector trained with "
             f"detrdistill ({how}).",
             "", "## Use", "", "```python", "from transformers import pipeline", *_registration_lines(m.family),
             f'detector = pipeline("object-detection", model="{model_dir}")',
             'detector("image.jpg", threshold=0.5)', "```", "",
             "The saved image processor resizes and normalises as the project's evaluation does "
             f"(short side {d.eval_size}, long side at most {d.max_size}, ImageNet mean/std).", "",
             "## Data", ""]
    if d.synthetic and d.train is None:
        lines.append(f"- synthetic shapes ({d.synth_images} training images of {d.synth_size} px)")
    lines += [x for x in (_split_line("train", d.train), _split_line("val", d.val)) if x]
    lines.append(f"- classes ({len(labels)}): {', '.join(labels)}")
    lines += ["", "## Config", "",
              f"- family `{m.family}`, d_model {m.d_model}, encoder/decoder layers {m.encoder_layers}/{m.decoder_layers}, "
              f"{m.num_heads} heads, {m.num_queries} queries, {m.num_feature_levels} feature levels",
              f"- backbone: ResNet hidden sizes {m.backbone.hidden_sizes}, depths {m.backbone.depths}"
              + (f", from `{m.pretrained}`" if m.pretrained else ""),
              f"- weights: {params:,} values in `model.safetensors` (parameters and buffers)" if params is not None else "",
              f"- training: {cfg.train.max_steps or cfg.train.epochs} "
              f"{'steps' if cfg.train.max_steps else 'epochs'}, batch {cfg.train.batch_size}, lr {cfg.optim.lr}, "
              f"seed {cfg.train.seed}"]
    for what, key, name in inputs:
        lines += ["", f"## {what.capitalize()}", "", f"- `{name}` (`{key}`; the distillation terms as configured "
                  "in the run's `config.yaml`)"]
    lines += ["", "## Evaluation (COCO bbox, val split)", ""]
    if stats:
        keys = STAT_ORDER  # n/a: no ground truth in that area range
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                  "| " + " | ".join(f"{stats[k]:.1f}" if k in stats else "n/a" for k in keys) + " |"]
    else:
        lines.append("not evaluated (no validation split)")
    return "\n".join(lines) + "\n"


def write_model_card(cfg: Config, model_dir: str | Path, stats: dict | None,
                     inputs: Sequence[tuple[str, str, str]] = ()) -> Path:
    """Write ``<model_dir>/README.md`` atomically (:func:`render_model_card`); returns its path."""
    from detrdistill.io_atomic import write_atomic
    return write_atomic(Path(model_dir) / "README.md", render_model_card(cfg, model_dir, stats, inputs))


def write_distilled_card(model_dir: str | Path, family: str, teacher: str, terms: list[str], recipe: str) -> Path:
    """``<model_dir>/README.md`` (atomic) for a student saved by the Python API
    (:meth:`detrdistill.DETRDistiller.save_student`): its use, classes, teacher and distillation terms."""
    model_dir = Path(model_dir)
    labels = _labels(model_dir)
    params = count_saved_parameters(model_dir)
    has_processor = (model_dir / "preprocessor_config.json").is_file()
    lines = [f"# {model_dir.name or 'detrdistill student'}", "",
             f"A `{family}` object detector distilled with detrdistill (DETRDistill) from the teacher `{teacher}`.",
             "", "## Use", "", "```python", "from transformers import pipeline", *_registration_lines(family),
             f'detector = pipeline("object-detection", model="{model_dir}")', 'detector("image.jpg", threshold=0.5)',
             "```", "",
             "The saved image processor prepares pixels as in training." if has_processor else
             "No image processor was saved with this model: give `pipeline` the one used in training.",
             "", "## Training", "",
             f"- classes ({len(labels)}): {', '.join(labels)}",
             f"- student loss: `loss.recipe={recipe}`; distillation terms: {', '.join(terms) or 'none'}",
             f"- weights: {params:,} values in `model.safetensors`" if params is not None else ""]
    from detrdistill.io_atomic import write_atomic
    return write_atomic(model_dir / "README.md", "\n".join(x for x in lines if x is not None) + "\n")
