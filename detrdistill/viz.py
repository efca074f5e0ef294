"""Figures: predictions side by side, the target-aware feature mask over an image, loss curves.

Matplotlib's object-oriented API (``matplotlib.figure.Figure``, no pyplot): no backend is chosen and no global
state is touched, on import or when drawing, and no screen is needed. Every function writes one PNG and returns its
path; the PNG's ``Title`` / ``Description`` text chunks hold its title and every panel's title and axis labels (what
a reader of the file, a screen reader or a test, can read without looking at the pixels).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from detrdistill.data import denormalize
from detrdistill.engine.evaluator import postprocess
from detrdistill.engine.metrics import read_metrics
from detrdistill.ops.boxes import cxcywh_to_xyxy

COLORS = matplotlib.colormaps["tab10"].colors


def figure_text(fig: Figure) -> str:
    """Every panel's title and axis labels, one panel per line: ``title | x: label | y: label``."""
    lines = []
    for ax in fig.axes:
        parts = [t for t in [ax.get_title()] if t] + [f"{a}: {t}" for a, t in (("x", ax.get_xlabel()),
                                                                                ("y", ax.get_ylabel())) if t]
        if parts:
            lines.append(" | ".join(parts))
    return "\n".join(lines)


def save_figure(fig: Figure, path: str | Path, title: str, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG whose text chunks hold ``title`` and :func:`figure_text`."""
    fig.savefig(path, dpi=dpi, metadata={"Title": title, "Description": figure_text(fig)})
    return Path(path)


def _image(pixel_values: torch.Tensor, h: int, w: int):
    return denormalize(pixel_values[:, :h, :w]).clamp(0, 1).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def plot_predictions(models: dict, dataset, indices: list[int], path: str | Path, score_threshold: float = 0.05):
    """Rows: images; columns: ground truth then each named model's best detections: as many as the image has
    objects (at least 3), those above ``score_threshold``."""
    from detrdistill.data import collate_fn
    names = ["ground truth", *models]
    fig = Figure(figsize=(3 * len(names), 3 * len(indices)))
    axes = fig.subplots(len(indices), len(names), squeeze=False)
    batch = collate_fn([dataset[i] for i in indices])
    outs = {}
    for name, adapter in models.items():
        adapter.eval()
        dev = next(adapter.parameters()).device
        o = adapter(batch["pixel_values"].to(dev), batch["pixel_mask"].to(dev))
        sizes = torch.stack([t["size"] for t in batch["labels"]]).to(dev)
        outs[name] = postprocess(o.logits[-1], o.boxes[-1], sizes, o.class_activation, top_k=50)
    for r, t in enumerate(batch["labels"]):
        h, w = t["size"].tolist()
        img = _image(batch["pixel_values"][r], h, w)
        scale = torch.tensor([w, h, w, h])
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
            if name == "ground truth":
                dets = [(b, int(lab), None) for b, lab in zip(cxcywh_to_xyxy(t["boxes"]) * scale, t["class_labels"])]
            else:
                d = outs[name][r]
                keep = (d["scores"] >= score_threshold) & (torch.arange(len(d["scores"]), device=d["scores"].device)
                                                           < max(3, len(t["boxes"])))
                dets = [(b.cpu(), int(lab), float(s)) for b, lab, s in
                        zip(d["boxes"][keep], d["labels"][keep], d["scores"][keep])]
            placed: list[tuple[float, float]] = []
            for box, lab, score in dets:
                x0, y0, x1, y1 = box.tolist()
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5,
                                           color=COLORS[lab % len(COLORS)]))
                label = dataset.id2label.get(lab, str(lab)) + ("" if score is None else f" {score:.2f}")
                tx, ty = label_position(x0, y0, placed, line_h=0.06 * h, width=0.3 * w)
                ax.text(tx, ty, label, fontsize=6, color="white", va="bottom", clip_on=True,
                        bbox=dict(facecolor=COLORS[lab % len(COLORS)], alpha=0.7, pad=0.5, lw=0))
    fig.tight_layout()
    return save_figure(fig, path, "predictions: ground truth, then each model's best detections")


def label_position(x: float, y: float, placed: list[tuple[float, float]], line_h: float,
                   width: float) -> tuple[float, float]:
    """Where a box label goes: at the box's top-left corner, moved down a line at a time while it would
    overlap a label already placed (within ``width`` horizontally and ``line_h`` vertically). Records it."""
    while any(abs(x - px) < width and abs(y - py) < line_h for px, py in placed):
        y += line_h
    placed.append((x, y))
    return x, y


@torch.no_grad()
def plot_feature_mask(teacher, dataset, index: int, path: str | Path, source: str = "encoder_inputs",
                      top_k: int = 100):
    """The teacher's target-aware mask (last stage, finest level) over one image, with its GT boxes."""
    from detrdistill.data import collate_fn
    from detrdistill.distillation.feature import quality_scores, target_aware_mask

    teacher.eval()
    batch = collate_fn([dataset[index]])
    dev = next(teacher.parameters()).device
    out = teacher(batch["pixel_values"].to(dev), batch["pixel_mask"].to(dev))
    targets = [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch["labels"]]
    feats = getattr(out, source)
    scores, idx = quality_scores(out.logits[-1:], out.boxes[-1:], targets, top_k, out.class_activation)
    masks = target_aware_mask(out.embeddings[-1:], feats, scores, idx, out.feature_masks or None)
    t = batch["labels"][0]
    h, w = t["size"].tolist()
    img = _image(batch["pixel_values"][0], h, w)
    ph, pw = batch["pixel_values"].shape[-2:]
    levels = len(masks)
    fig = Figure(figsize=(3.2 * (levels + 1) + 0.8, 3.4), layout="constrained")
    axes = fig.subplots(1, levels + 1)
    axes[0].imshow(img)
    axes[0].set_title("image + GT")
    scale = torch.tensor([w, h, w, h])
    for box in cxcywh_to_xyxy(t["boxes"]) * scale:
        x0, y0, x1, y1 = box.tolist()
        axes[0].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.2))
    for m, mask in enumerate(masks):
        up = F.interpolate(mask[0, 0][None, None].float(), size=(ph, pw), mode="nearest")[0, 0, :h, :w].cpu()
        axes[m + 1].imshow(img)
        shown = axes[m + 1].imshow(up.numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        mh, mw = mask.shape[-2:]
        axes[m + 1].set_title(f"mask, level {m} ({mh} x {mw} cells)")
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    if levels:
        fig.colorbar(shown, ax=list(axes[1:]), shrink=0.85, label="mask weight Ψ (0-1]")
    title = "target-aware feature-distillation mask (teacher, last stage)"
    fig.suptitle(title)
    return save_figure(fig, path, title)


def plot_loss_curves(runs: dict[str, str | Path], path: str | Path):
    """Detection loss (cls + bbox + giou) per run, and each distillation term of the distilled runs."""
    det_keys = ("loss/cls", "loss/bbox", "loss/giou")
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for name, metrics_file in runs.items():
        recs = [r for r in read_metrics(metrics_file) if "loss" in r]
        steps = [r["step"] for r in recs]
        ax1.plot(steps, [sum(r.get(k, 0.0) for k in det_keys) for r in recs], label=name)
        extra = sorted({k for r in recs for k in r if k.startswith("loss/") and k not in det_keys})
        for k in extra:
            ax2.plot(steps, [r.get(k) for r in recs], label=f"{name}: {k[5:]}")
    ax1.set_title("detection loss (student's own queries)")
    ax1.set_xlabel("step"), ax1.set_yscale("log")
    ax1.set_ylabel("loss (cls + bbox + giou, weighted, all stages; log)")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)  # below, off the curves
    ax2.set_title("distillation terms")
    ax2.set_xlabel("step"), ax2.set_yscale("log")
    ax2.set_ylabel("loss (each term, weighted; log)")
    if ax2.lines:
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize=7, frameon=False)
    return save_figure(fig, path, "loss curves: student alone vs distilled")
