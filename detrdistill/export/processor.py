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

The class is declared per family in the registry (``FamilySpec.image_processor``).

RT-DETR: transformers' default RT-DETR processor stretches to 640x640 and does not normalise; we set
``size`` to shortest/longest edge and ``do_normalize=True``. RT-DETR's FPN needs sides that are
multiples of 32 and the model ignores the pixel mask, so its processor pads every image to a fixed
square ``pad_size`` (``max_size`` rounded up to 32), as a mixed-orientation eval batch is padded.

Known difference: when ``max_size`` caps the resize, transformers computes the long side from the
unrounded short side (ours from the rounded one), so it may differ by one pixel.
"""
from __future__ import annotations

import transformers

from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD

def processor_class_name(family: str) -> str:
    """The processor class of ``family``, from the family registry (``FamilySpec.image_processor``)."""
    from detrdistill.models.families import family_spec

    return family_spec(family).image_processor


RT_DETR_DIVISOR = 32


def _processor_class(name: str) -> type:
    """The PIL backend of a processor (no torchvision needed); the saved type name stays generic, so a
    reader with torchvision gets the torchvision backend of the same processor."""
    cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name, None)
    if cls is None:  # pragma: no cover - transformers without the class
        raise ImportError(f"transformers {transformers.__version__} has no {name}")
    return cls


def image_processor_settings(family: str, eval_size: int, max_size: int) -> dict:
    """The ``preprocessor_config.json`` settings that resize/normalise like the eval transforms (the keyword
    arguments of :func:`build_image_processor`; also the student's own view when a teacher's is compared to it).

    eval_size: short side (``data.eval_size``); max_size: longest side cap (``data.max_size``).
    """
    kwargs = dict(size={"shortest_edge": int(eval_size), "longest_edge": int(max_size)},
                  do_resize=True, resample=2,  # PIL bilinear, as transforms.resize
                  do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_pad=True)
    from detrdistill.models.families import family_spec

    if "square_padding" in family_spec(family).capabilities:
        side = -(-max(int(eval_size), int(max_size)) // RT_DETR_DIVISOR) * RT_DETR_DIVISOR
        kwargs["pad_size"] = {"height": side, "width": side}
    return kwargs


def build_image_processor(family: str, eval_size: int, max_size: int):
    """The transformers processor for ``family`` with :func:`image_processor_settings`."""
    return _processor_class(processor_class_name(family))(**image_processor_settings(family, eval_size, max_size))


def save_image_processor(model_dir, family: str, eval_size: int, max_size: int) -> None:
    """Write ``preprocessor_config.json`` into ``model_dir`` (transformers layout)."""
    build_image_processor(family, eval_size, max_size).save_pretrained(str(model_dir))
