"""Box ops, exact batched Hungarian matching and the batched DETR set criterion."""
from .boxes import (box_area, box_iou, cxcywh_to_xyxy, generalized_box_iou, generalized_box_iou_pairs,
                    xyxy_to_cxcywh)
from .criterion import (CriterionOutput, SetCriterion, denoising_assignments, mean_across_processes,
                        reduce_num_boxes, sigmoid_focal_loss)
from .matcher import HungarianMatcher, focal_class_cost, linear_assignment, pad_targets

__all__ = [
    "box_area", "box_iou", "cxcywh_to_xyxy", "generalized_box_iou", "generalized_box_iou_pairs", "xyxy_to_cxcywh",
    "CriterionOutput", "SetCriterion", "denoising_assignments", "mean_across_processes", "reduce_num_boxes",
    "sigmoid_focal_loss",
    "HungarianMatcher", "focal_class_cost", "linear_assignment", "pad_targets",
]
