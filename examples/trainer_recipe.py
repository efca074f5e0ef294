"""Distil inside transformers' object-detection fine-tuning recipe.

The recipe of the transformers object-detection guide (https://huggingface.co/docs/transformers/tasks/object_detection):
an image processor turns COCO annotations into ``{"class_labels", "boxes"}`` labels, a collator stacks
``pixel_values`` / ``pixel_mask``, ``TrainingArguments`` + ``Trainer`` train. The one change: ``Trainer`` becomes
``DistillationTrainer`` with a ``teacher``. Data: any COCO-format set (a json + an image folder), e.g. the synthetic
set (``detrdistill data synth runs/synth``) or bccd::

    python examples/trainer_recipe.py --ann runs/synth/train.json --images runs/synth/images \\
        --val-ann runs/synth/val.json --student PekingU/rtdetr_r50vd --teacher runs/teacher/model \\
        --output-dir runs/trainer_student --max-steps 2000 --image-size 640

The student is loaded with ``AutoModelForObjectDetection.from_pretrained`` (heads re-initialised for the dataset's
classes, as the guide does); the teacher must know every dataset class by name. The distilled student is written
to ``<output-dir>/student``, a plain transformers model folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection, TrainingArguments

from detrdistill import DistillationTrainer


class CocoDataset(torch.utils.data.Dataset):
    """A COCO json + its image folder, encoded by the image processor (pixels, mask and labels) one image at a time."""

    def __init__(self, ann_file: str, image_dir: str, processor):
        coco = json.loads(Path(ann_file).read_text())
        self.image_dir, self.processor, self.images = Path(image_dir), processor, coco["images"]
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]  # the COCO id of each label
        self.id2label = {i: c["name"] for i, c in enumerate(categories)}
        label_of = {c: i for i, c in enumerate(self.category_ids)}
        self.annotations = {im["id"]: [] for im in self.images}
        for a in coco["annotations"]:  # the processor reads category_id as the label index
            self.annotations[a["image_id"]].append({**a, "category_id": label_of[a["category_id"]]})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        info = self.images[i]
        image = Image.open(self.image_dir / info["file_name"]).convert("RGB")
        target = {"image_id": info["id"], "annotations": self.annotations[info["id"]]}
        enc = self.processor(images=image, annotations=target, return_tensors="pt")
        item = {"pixel_values": enc["pixel_values"][0], "labels": enc["labels"][0]}
        if "pixel_mask" in enc:
            item["pixel_mask"] = enc["pixel_mask"][0]
        return item


def collate_fn(batch: list[dict]) -> dict:
    """As in the guide: stacked pixels (and masks), the labels as a list of dicts."""
    data = {"pixel_values": torch.stack([x["pixel_values"] for x in batch]), "labels": [x["labels"] for x in batch]}
    if "pixel_mask" in batch[0]:
        data["pixel_mask"] = torch.stack([x["pixel_mask"] for x in batch])
    return data


def main(argv: list[str] | None = None) -> DistillationTrainer:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", required=True, help="training COCO json")
    p.add_argument("--images", required=True, help="folder the json's file_name entries are relative to")
    p.add_argument("--val-ann", help="validation COCO json (same image folder): evaluated at the end")
    p.add_argument("--student", required=True, help="model folder or hub id the student starts from")
    p.add_argument("--teacher", required=True, help="teacher model folder or hub id")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--image-size", type=int, default=640, help="images are resized to fit and padded to this square")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0: none)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args(argv)

    side = args.image_size
    processor = AutoImageProcessor.from_pretrained(
        args.student, do_resize=True, size={"max_height": side, "max_width": side},
        do_pad=True, pad_size={"height": side, "width": side})
    train_ds = CocoDataset(args.ann, args.images, processor)
    val_ds = CocoDataset(args.val_ann, args.images, processor) if args.val_ann else None
    student = AutoModelForObjectDetection.from_pretrained(
        args.student, id2label=train_ds.id2label, label2id={v: k for k, v in train_ds.id2label.items()},
        ignore_mismatched_sizes=True)

    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr, weight_decay=1e-4, max_grad_norm=0.1, lr_scheduler_type="cosine", warmup_steps=10,
        logging_steps=args.logging_steps, save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500, bf16=args.bf16, use_cpu=args.cpu, report_to="none",
        remove_unused_columns=False, eval_do_concat_batches=False, dataloader_num_workers=0)
    trainer = DistillationTrainer(
        model=student, teacher=args.teacher,  # <- the one change (and Trainer -> DistillationTrainer)
        category_ids=train_ds.category_ids,  # optional: saved with the student, so predict writes the dataset ids
        args=training_args, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collate_fn,
        processing_class=processor)
    trainer.train()
    if val_ds is not None:
        print(json.dumps(trainer.evaluate()))
    trainer.save_model(str(Path(args.output_dir) / "student"))
    return trainer


if __name__ == "__main__":
    main()
