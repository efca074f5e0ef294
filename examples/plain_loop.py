"""Distil in your own PyTorch / accelerate loop: DETRDistiller on COCO annotations as they are in the json.

    python examples/plain_loop.py --ann train.json --images images/ --student DIR_OR_HUB_ID \\
        --teacher DIR_OR_HUB_ID --output-dir runs/loop_student --steps 1000 --image-size 640
"""
import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection

from detrdistill import DETRDistiller, DistillConfig

p = argparse.ArgumentParser()
for name, default in (("ann", None), ("images", None), ("student", None), ("teacher", None), ("output-dir", None),
                      ("steps", 1000), ("image-size", 640), ("batch-size", 8), ("lr", 1e-4)):
    p.add_argument(f"--{name}", type=type(default) if default is not None else str, default=default,
                   required=default is None)
args = p.parse_args()

coco = json.loads(Path(args.ann).read_text())
categories = sorted(coco["categories"], key=lambda c: c["id"])
annotations = {im["id"]: [] for im in coco["images"]}
for a in coco["annotations"]:
    annotations[a["image_id"]].append(a)
side = args.image_size
processor = AutoImageProcessor.from_pretrained(args.student, size={"max_height": side, "max_width": side},
                                               do_pad=True, pad_size={"height": side, "width": side})
student = AutoModelForObjectDetection.from_pretrained(
    args.student, id2label={i: c["name"] for i, c in enumerate(categories)}, ignore_mismatched_sizes=True)
distiller = DETRDistiller(args.teacher, student, DistillConfig(), student_processor=processor,
                          category_ids=[c["id"] for c in categories])  # labels stay COCO annotations (pixel boxes)


def collate(images):  # pixels from the student's processor; labels: the COCO annotations + each image's size
    enc = processor(images=[Image.open(Path(args.images) / im["file_name"]).convert("RGB") for im in images],
                    return_tensors="pt")
    return (enc["pixel_values"], enc.get("pixel_mask"), [annotations[im["id"]] for im in images],
            [(im["height"], im["width"]) for im in images])


accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
optimizer = torch.optim.AdamW(distiller.trainable_parameters(), lr=args.lr, weight_decay=1e-4)
loader = torch.utils.data.DataLoader(coco["images"], batch_size=args.batch_size, shuffle=True, collate_fn=collate)
distiller, optimizer, loader = accelerator.prepare(distiller, optimizer, loader)
distiller.train()
step = 0
while step < args.steps:
    for pixel_values, pixel_mask, labels, sizes in loader:
        out = distiller(pixel_values, pixel_mask=pixel_mask, labels=labels, image_sizes=sizes)
        accelerator.backward(out.loss)
        accelerator.clip_grad_norm_(distiller.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        accelerator.print(json.dumps({"step": step, "loss": out.loss.item(),
                                      **{k: v.item() for k, v in out.losses.items()}}))
        if step == args.steps:
            break
if accelerator.is_main_process:
    accelerator.unwrap_model(distiller).save_student(args.output_dir, image_processor=processor)
