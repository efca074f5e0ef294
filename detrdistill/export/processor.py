"""The transformers image processor that feeds a model the pixels the project's eval transforms feed it.

The project evaluates with (:func:`detrdistill.data.transforms.build_transforms`, ``train=False``):
bilinear resize so the short side is ``data.eval_size`` and the long side at most ``data.max_size``,
rescale to [0, 1], ImageNet mean/std normalisation, zero padding bottom/right. Each family gets the
transformers processor class whose ``post_process_object_detection`` matches the project's
post-processing (:func:`detrdistill.engine.evaluator.postprocess`), configured to the same resize and
normalisation:

==================  ================================  ====================================================
family              processor class                   post-processing
==================  ================================  ====================================================
detr                ``DetrImageProcessor``            softmax, best real class per query (as ours)
conditional_detr    ``ConditionalDetrImageProcessor`` sigmoid, top-100 (query, class) pairs (as ours)
dab_detr            ``ConditionalDetrImageProcessor`` sigmoid, top-100 (as ours; transformers has no DAB one)
deformable_detr     ``DeformableDetrImageProcessor``  sigmoid, top-100 (as ours)
rt_detr, _v2        ``RTDetrImageProcessor``          sigmoid, top-``num_queries`` (ours: top-100)
adamixer            ``DeformableDetrImageProcessor``  sigmoid, top-100 (as ours)
==================  ================================  ====================================================

Everything family-specific comes from the family registry (:class:`~detrdistill.models.families.FamilySpec`):
the class (``image_processor``), extra settings (``image_processor_kwargs``) and the padding rule: a family with
the ``square_padding`` capability (the model ignores the pixel mask; RT-DETR's FPN also needs sides that are
multiples of 32) gets a processor that pads every image to one fixed square ``pad_size`` (``max_size`` rounded up
to the family's ``size_multiple``), as a mixed-orientation eval batch is padded; every other family is padded
bottom/right to the largest image of the batch and reads the pixel mask.

RT-DETR: transformers' default RT-DETR processor stretches to 640x640 and does not normalise; we set
``size`` to shortest/longest edge and ``do_normalize=True`` (for every family alike).

A model folder's processor is read back by :func:`load_image_processor` (``predict``, ``export``): the saved one, or
for runs exported before it was saved one rebuilt from the run's ``config.yaml``.

Known difference: when ``max_size`` caps the resize, transformers computes the long side from the
unrounded short side (ours from the rounded one), so it may differ by one pixel.
"""
from __future__ import annotations

import logging
from pathlib import Path

import transformers

from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detrdistill.models.model_dir import ModelDirError

log = logging.getLogger("detrdistill")


def processor_class_name(family: str) -> str:
    """The processor class of ``family``, from the family registry (``FamilySpec.image_processor``)."""
    from detrdistill.models.families import family_spec

    return family_spec(family).image_processor


def _processor_class(name: str) -> type:
    """The PIL backend of a processor (no torchvision needed); the saved type name stays generic, so a
    reader with torchvision gets the torchvision backend of the same processor."""
    cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name, None)
    if cls is None:  # pragma: no cover - transformers without the class
        raise ImportError(f"transformers {transformers.__version__} has no {name}")
    return cls


def image_processor_settings(family: str, eval_size: int, max_size: int, multiple: int | None = None) -> dict:
    """The ``preprocessor_config.json`` settings that resize/normalise like the eval transforms (the keyword
    arguments of :func:`build_image_processor`; also the student's own view when a teacher's is compared to it).

    eval_size: short side (``data.eval_size``); max_size: longest side cap (``data.max_size``); multiple: the padded
    sides' multiple of the model at hand (``FamilySpec.sides(config).multiple``; default the family's
    ``size_multiple``).
    """
    kwargs = dict(size={"shortest_edge": int(eval_size), "longest_edge": int(max_size)},
                  do_resize=True, resample=2,  # PIL bilinear, as transforms.resize
                  do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_pad=True)
    from detrdistill.models.families import family_spec

    spec = family_spec(family)
    if "square_padding" in spec.capabilities:
        side = square_pad_side(eval_size, max_size, multiple or spec.size_multiple)
        kwargs["pad_size"] = {"height": side, "width": side}
    return {**kwargs, **spec.image_processor_kwargs}


def square_pad_side(eval_size: int, max_size: int, multiple: int) -> int:
    """The fixed square side of a ``square_padding`` family: the longest resized side, rounded up to ``multiple``."""
    return -(-max(int(eval_size), int(max_size)) // multiple) * multiple


def build_image_processor(family: str, eval_size: int, max_size: int, multiple: int | None = None):
    """The transformers processor for ``family`` with :func:`image_processor_settings`."""
    return _processor_class(processor_class_name(family))(**image_processor_settings(family, eval_size, max_size,
                                                                                     multiple))


def processor_from_dict(config: dict):
    """A processor from its saved settings (a ``preprocessor_config.json`` dict, ``image_processor_type`` naming
    the class), e.g. the copy in an ONNX file's metadata."""
    name = str(config.get("image_processor_type", ""))
    try:
        cls = _processor_class(name.removesuffix("Pil"))
    except ImportError:
        raise ValueError(f"image_processor_type {name!r} is not a transformers image processor") from None
    return cls.from_dict({k: v for k, v in config.items() if k != "image_processor_type"})


def save_image_processor(model_dir, family: str, eval_size: int, max_size: int, multiple: int | None = None) -> None:
    """Write ``preprocessor_config.json`` into ``model_dir`` (transformers layout)."""
    build_image_processor(family, eval_size, max_size, multiple).save_pretrained(str(model_dir))


def load_image_processor(model_dir: Path, family: str):
    """The saved processor, else one built from the run's ``config.yaml`` (runs exported before it was saved)."""
    if (model_dir / "preprocessor_config.json").is_file():
        return load_saved_processor(model_dir)
    run_cfg = model_dir.parent / "config.yaml"
    if not run_cfg.is_file():
        raise ModelDirError(f"{model_dir}: no preprocessor_config.json and no run config {run_cfg} to rebuild it from")
    from detrdistill.config import load_config

    data = load_config(run_cfg).data
    log.info("%s has no image processor; using the eval transforms of %s", model_dir, run_cfg)
    return build_image_processor(family, data.eval_size, data.max_size)


def load_saved_processor(model_dir: Path):
    """``preprocessor_config.json`` through ``AutoImageProcessor`` with ``trust_remote_code=False``: a processor
    that names code shipped in the folder (``auto_map``) is refused in one line, never run."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(model_dir), trust_remote_code=False)
    except ValueError as e:
        if "trust_remote_code" not in str(e) and "custom code" not in str(e):
            raise
        raise ModelDirError(f"{model_dir / 'preprocessor_config.json'}: names custom code shipped in the model "
                            "folder (auto_map); detrdistill never runs a model folder's code. Remove auto_map to use "
                            "the standard image processor") from None
