"""Preprocessing travels with the teacher: a teacher whose processor normalises otherwise gets exactly the pixels
its own processor produces for the same resized image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detrdistill.config import DistillConfig
from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pil_to_tensor
from detrdistill.distillation import Distiller
from detrdistill.distillation.feature import sample_on_teacher_grid
from detrdistill.distillation.teacher_pixels import PixelNorm, ResizeRule, build_teacher_pixels

from .test_distiller import criterion, make, model_cfg  # noqa: F401 (criterion: fixture)

STUDENT = PixelNorm(IMAGENET_MEAN, IMAGENET_STD)
STUDENT_RESIZE = ResizeRule("shortest_longest", 512, 800)  # data.eval_size / data.max_size defaults
pytestmark = pytest.mark.usefixtures("one_thread")


def student_pixels(img: Image.Image) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pil_to_tensor(img) - mean) / std


def image(h=40, w=56, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("kwargs", [dict(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]),
                                    dict(do_normalize=False)])  # e.g. transformers' RT-DETR processor
def test_teacher_gets_what_its_processor_produces(kwargs):
    from transformers import DeformableDetrImageProcessorPil as Proc
    proc = Proc(do_resize=False, do_pad=False, **kwargs)
    img = image()
    want = torch.as_tensor(np.asarray(proc(images=img, return_tensors="np")["pixel_values"]))[0]
    tp = build_teacher_pixels(proc.to_dict(), STUDENT)
    assert tp is not None
    got = tp(student_pixels(img)[None], torch.ones(1, 40, 56, dtype=torch.long))
    torch.testing.assert_close(got.pixel_values[0], want, atol=1e-5, rtol=1e-5)
    assert got.affine is None  # no resizing asked for: the same grid as the student's


def test_same_normalisation_or_no_processor_changes_nothing():
    assert build_teacher_pixels(None, STUDENT) is None
    same = dict(do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_rescale=True,
                rescale_factor=1 / 255)
    assert build_teacher_pixels(same, STUDENT) is None


def test_padding_stays_zero_and_distiller_feeds_the_teacher_its_view():
    tp = build_teacher_pixels(dict(image_mean=[0.5] * 3, image_std=[0.5] * 3), STUDENT)
    x = torch.randn(2, 3, 64, 64)
    mask = torch.ones(2, 64, 64, dtype=torch.long)
    mask[1, :, 40:] = 0
    x[1, :, :, 40:] = 0
    y = tp(x, mask).pixel_values
    assert torch.all(y[1, :, :, 40:] == 0) and not torch.allclose(y[0], x[0])
    teacher, student = make(model_cfg(d_model=64), seed=1), make(model_cfg())
    dist = Distiller(teacher, student, DistillConfig(), teacher_pixels=tp)
    plain = Distiller(teacher, student, DistillConfig())
    torch.testing.assert_close(dist.teacher_forward(x, mask).logits, plain.teacher_forward(y, mask).logits)
    assert not torch.allclose(dist.teacher_forward(x, mask).logits, plain.teacher_forward(x, mask).logits)
    assert not any(k.startswith("teacher_pixels") for k in dist.checkpoint_state_dict())


def test_a_teacher_folder_brings_its_processor(tmp_path):
    """A teacher named by its folder is fed pixels its saved processor's way (as ``distill --teacher DIR``); the
    same teacher given as a model object sees the student's pixels unless its processor is passed."""
    from transformers import DeformableDetrImageProcessorPil as Proc

    from detrdistill.distillation.detr_distiller import DETRDistiller
    teacher = make(model_cfg(d_model=64), seed=1)
    teacher.model.save_pretrained(tmp_path / "t")

    def view(t, **kw):
        return DETRDistiller(t, make(model_cfg()), DistillConfig(), **kw).distiller.teacher_pixels

    assert view(str(tmp_path / "t")) is None  # no preprocessor_config.json
    proc = Proc(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    proc.save_pretrained(tmp_path / "t")
    for tp in (view(str(tmp_path / "t")), view(teacher.model, teacher_processor=proc)):
        assert tp is not None and tp.teacher.mean == (0.5, 0.5, 0.5)
        assert tp.resize == ResizeRule("shortest_longest", 800, 1333)  # the processor's default, not the student's
    assert view(teacher.model) is None


@pytest.mark.parametrize("size", [{"shortest_edge": 30, "longest_edge": 60}, {"shortest_edge": 64, "longest_edge": 70},
                                  {"height": 32, "width": 48}, {"max_height": 20, "max_width": 100}])
def test_teacher_is_resized_as_its_processor_resizes(size):
    """Each image's real region is resized by the processor's rule; pixels within one uint8 step of PIL's."""
    from transformers import DeformableDetrImageProcessorPil as Proc
    proc = Proc(size=size, do_pad=False, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    imgs = [image(40, 56, seed=0), image(48, 30, seed=1)]
    x = torch.zeros(2, 3, 48, 56)
    mask = torch.zeros(2, 48, 56, dtype=torch.long)
    for i, im in enumerate(imgs):
        x[i, :, :im.height, :im.width] = student_pixels(im)
        mask[i, :im.height, :im.width] = 1
    tp = build_teacher_pixels(proc.to_dict(), STUDENT, student_resize=STUDENT_RESIZE, mode="processor")
    got = tp(x, mask)
    for i, im in enumerate(imgs):
        want = torch.as_tensor(np.asarray(proc(images=im, return_tensors="np")["pixel_values"]))[0]
        h, w = want.shape[-2:]
        assert int(got.pixel_mask[i].sum()) == h * w and bool(got.pixel_mask[i, :h, :w].all())
        gray_level = 1 / 255 / 0.2  # one uint8 step (PIL resizes uint8 images), in the teacher's normalised units
        assert (got.pixel_values[i, :, :h, :w] - want).abs().max() <= 1.05 * gray_level
        assert torch.all(got.pixel_values[i, :, h:] == 0) and torch.all(got.pixel_values[i, :, :, w:] == 0)


def test_auto_resizes_only_when_the_teachers_rule_differs_and_modes_are_honoured():
    ours = dict(size={"shortest_edge": 512, "longest_edge": 800}, image_mean=list(IMAGENET_MEAN),
                image_std=list(IMAGENET_STD))
    assert build_teacher_pixels(ours, STUDENT, student_resize=STUDENT_RESIZE) is None
    forced = build_teacher_pixels(ours, STUDENT, student_resize=STUDENT_RESIZE, mode="processor")
    assert forced is not None and forced.resize == STUDENT_RESIZE and not forced.normalises
    bigger = dict(ours, size={"shortest_edge": 800, "longest_edge": 1333})
    assert build_teacher_pixels(bigger, STUDENT, student_resize=STUDENT_RESIZE).resize.a == 800
    assert build_teacher_pixels(bigger, STUDENT, student_resize=STUDENT_RESIZE, mode="student") is None
    assert build_teacher_pixels(dict(ours, do_resize=False, image_mean=[0.5] * 3), STUDENT).resize is None
    with pytest.raises(Exception, match="preprocessor_config.json.*size"):
        build_teacher_pixels(dict(ours, size={"edge": 3}), STUDENT)


def test_sampling_on_the_teacher_grid_aligns_the_two_views():
    """A student map holding each pixel's position in its image, sampled on the teacher's grid through the view's
    affine, holds the teacher pixel's position in the same image (the two views are the same image region)."""
    x = torch.zeros(2, 3, 48, 64)
    mask = torch.zeros(2, 48, 64, dtype=torch.long)
    mask[0, :48, :64] = 1
    mask[1, :32, :40] = 1
    view = build_teacher_pixels(dict(size={"shortest_edge": 80, "longest_edge": 400}, image_mean=list(IMAGENET_MEAN),
                                     image_std=list(IMAGENET_STD)), STUDENT, student_resize=STUDENT_RESIZE,
                                mode="processor")(x, mask)
    assert view.affine is not None and view.pixel_values.shape[-2:] == (96, 128)  # 80 x 106, rounded up to 32s

    def position_map(real_hw, canvas_hw):  # [B, 2, H, W]: (y, x) / real side at pixel centres, 0 on padding
        H, W = canvas_hw
        out = torch.zeros(len(real_hw), 2, H, W)
        for i, (h, w) in enumerate(real_hw):
            ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
            out[i, 0, :h, :w], out[i, 1, :h, :w] = ys[:, None].expand(h, w), xs[None, :].expand(h, w)
        return out
    student_map = position_map([(48, 64), (32, 40)], (48, 64))
    t_real = [(int(m.any(1).sum()), int(m.any(0).sum())) for m in view.pixel_mask.bool()]
    want = position_map(t_real, tuple(view.pixel_values.shape[-2:]))
    got = sample_on_teacher_grid(student_map, view.affine, tuple(want.shape[-2:]))
    for i, (h, w) in enumerate(t_real):  # inside (one pixel off the border, where bilinear meets the padding)
        torch.testing.assert_close(got[i, :, 1:h - 1, 1:w - 1], want[i, :, 1:h - 1, 1:w - 1], atol=1e-4, rtol=0)
    # the teacher's real side half the student's on a map of half the cells = a plain bilinear resize
    plain = sample_on_teacher_grid(student_map, torch.full((2, 2), 2.0), (24, 32))
    torch.testing.assert_close(plain, torch.nn.functional.interpolate(student_map, size=(24, 32), mode="bilinear",
                                                                      align_corners=False), atol=1e-5, rtol=0)


def test_sampling_is_exact_on_strided_maps_that_overhang_their_canvas():
    """Maps of one stride (here 64: a Deformable DETR extra level) have ceil(side / 64) cells, which may span more
    pixels than the canvas (2 cells = 128 px of a 96-px student canvas, 1 cell = 64 px of the teacher's). A student
    map holding each cell centre's position in the real image, sampled on the teacher's grid, gives the teacher cell
    centre's position in the same image."""
    x = torch.zeros(1, 3, 96, 96)
    mask = torch.ones(1, 96, 96, dtype=torch.long)
    view = build_teacher_pixels(dict(size={"shortest_edge": 50, "longest_edge": 50}, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3), STUDENT, student_resize=STUDENT_RESIZE)(x, mask)
    assert view.pixel_values.shape[-2:] == (64, 64) and int(view.pixel_mask[0].sum()) == 50 * 50
    stride = 64
    student_cells = (torch.arange(2) + 0.5) * stride / 96  # cell centres, as fractions of the 96-px real image
    student_map = torch.stack([student_cells[:, None].expand(2, 2), student_cells[None, :].expand(2, 2)])[None]
    got = sample_on_teacher_grid(student_map, view.affine, (1, 1))
    want = 0.5 * stride / 50  # the teacher's one cell centre (32 px of its 50-px real image)
    torch.testing.assert_close(got[0, :, 0, 0], torch.tensor([want, want]), atol=1e-5, rtol=0)


def test_a_real_time_teacher_takes_its_resized_view():
    """An RT-DETR teacher (its encoder refuses sides that are not multiples of 32) fed a view shrunk by its
    processor's rule to 64 x 112: the canvas is rounded up to 32s and the teacher runs."""
    from tests.registry_models import tiny_family_model
    from detrdistill.models.families import get_adapter

    tp = build_teacher_pixels(dict(size={"shortest_edge": 64, "longest_edge": 200}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3), STUDENT, student_resize=STUDENT_RESIZE)
    x, mask = torch.randn(2, 3, 128, 224), torch.ones(2, 128, 224, dtype=torch.long)
    view = tp(x, mask)
    assert view.pixel_values.shape[-2:] == (64, 128) and int(view.pixel_mask[0].any(0).sum()) == 112
    teacher = get_adapter(tiny_family_model("rt_detr"))
    with torch.no_grad():
        out = teacher(view.pixel_values, view.pixel_mask)
    assert torch.isfinite(out.boxes).all()


def test_distilling_from_a_resized_teacher_view_trains_the_student(criterion):
    """Every term runs on a teacher fed its own (larger) view; the feature terms get gradients to the student."""
    tp = build_teacher_pixels(dict(size={"shortest_edge": 96, "longest_edge": 160}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3), STUDENT, student_resize=STUDENT_RESIZE, mode="processor")
    teacher, student = make(model_cfg(d_model=64), seed=1), make(model_cfg())
    cfg = DistillConfig()
    cfg.fitnet.enabled = True
    dist = Distiller(teacher, student, cfg, teacher_pixels=tp)
    x, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.long)
    mask[1, 40:] = 0
    targets = [dict(class_labels=torch.tensor([0]), boxes=torch.tensor([[0.5, 0.5, 0.3, 0.4]])) for _ in range(2)]
    out = dist(x, mask, targets, criterion)
    src = cfg.feature.source
    assert getattr(out.teacher, src)[0].shape[-1] > getattr(out.student, src)[0].shape[-1]  # teacher saw 96 px, not 64
    assert {"feature", "fitnet"} <= set(out.loss_dict) and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in dist.student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in dist.teacher.parameters())


def test_auto_never_enlarges_small_images_but_shrinks_large_ones():
    """A hub teacher's processor (shortest edge 800, longest 1333) on 64 px images: the default feeds them at the
    student's size, normalised its way; only `processor` enlarges them. A rule smaller than the image shrinks it."""
    hub = dict(size={"shortest_edge": 800, "longest_edge": 1333}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    x, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.long)
    mask[1, :, 48:] = 0
    auto = build_teacher_pixels(hub, STUDENT, student_resize=STUDENT_RESIZE)
    view = auto(x, mask)
    assert view.pixel_values.shape == (2, 3, 64, 64) and view.affine is None and torch.equal(view.pixel_mask, mask)
    norm_only = build_teacher_pixels(dict(hub, do_resize=False), STUDENT)(x, mask)
    torch.testing.assert_close(view.pixel_values, norm_only.pixel_values)  # still normalised the teacher's way
    enlarged = build_teacher_pixels(hub, STUDENT, student_resize=STUDENT_RESIZE, mode="processor")(x, mask)
    oh, ow = ResizeRule("shortest_longest", 800, 1333).output_size(64, 48)
    assert enlarged.pixel_values.shape[-2:] == (-(-oh // 32) * 32, -(-ow // 32) * 32)  # its canvas: 32s
    small_rule = dict(hub, size={"shortest_edge": 32, "longest_edge": 40})
    shrunk = build_teacher_pixels(small_rule, STUDENT, student_resize=STUDENT_RESIZE)(x, mask)
    assert shrunk.affine is not None and shrunk.pixel_values.shape[-2:] == (64, 32)  # 40 x 32 -> 64 x 32
    real = [(int(m.any(1).sum()), int(m.any(0).sum())) for m in shrunk.pixel_mask.bool()]
    assert real == [(32, 32), ResizeRule("shortest_longest", 32, 40).output_size(64, 48)]


def test_the_first_batch_logs_both_input_sizes_and_the_measured_step_cost(criterion, caplog):
    """One line on the first forward only: teacher and student input sizes, forward times, seconds per step, and the
    distill.teacher_input hint when the teacher's view is much larger."""
    import logging
    enlarge = build_teacher_pixels(dict(size={"shortest_edge": 160, "longest_edge": 160}, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3), STUDENT, student_resize=STUDENT_RESIZE, mode="processor")
    teacher, student = make(model_cfg(d_model=64), seed=1), make(model_cfg())
    x, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.long)
    targets = [dict(class_labels=torch.tensor([0]), boxes=torch.tensor([[0.5, 0.5, 0.3, 0.4]])) for _ in range(2)]
    cfg = DistillConfig(teacher_input="processor")
    dist = Distiller(teacher, student, cfg, teacher_pixels=enlarge)
    with caplog.at_level(logging.INFO, logger="detrdistill"):
        dist(x, mask, targets, criterion)
        dist(x, mask, targets, criterion)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("distill.teacher input")]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "distill.teacher input 2 x 3 x 160 x 160" in line and "student input 2 x 3 x 64 x 64" in line
    assert "teacher forward" in line and "student forward" in line and "s per step" in line
    assert "6x the student's pixels: distill.teacher_input=auto" in line  # 160^2 / 64^2 = 6.25
    caplog.clear()
    same = Distiller(teacher, student, DistillConfig())  # the student's pixels: no hint
    with caplog.at_level(logging.INFO, logger="detrdistill"):
        same(x, mask, targets, criterion)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("distill.teacher input")][0]
    assert "distill.teacher input 2 x 3 x 64 x 64 (the student's pixels" in line and "makes it cheaper" not in line
