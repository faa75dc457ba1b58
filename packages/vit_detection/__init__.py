"""vit_detection: DETR-style object detection on the shared ViT backbone.

Modules: `box_ops`, `position_encoding`, `neck` (single-scale projection, simple feature
pyramid), `transformer`, `detr` (the detector), `matcher` (Hungarian), `criterion` (set loss),
`postprocess`, `data` (COCO JSON through pycocotools), `transforms` (albumentations),
`coco_eval`, `prepare` (demo data), `config`, `model` (the builders) and `task` (the Task `vit_training.fit`
runs).
"""

from .api import Detections, Detector
from .coco_eval import evaluate_coco, predictions_to_coco_results, summary_text
from .config import DetectionConfig
from .criterion import SetCriterion
from .data import CocoDetection, collate_detection
from .detr import DETR
from .matcher import HungarianMatcher
from .model import build_detector
from .postprocess import PostProcess
from .task import DetectionTask
from .transforms import build_detection_transforms

__all__ = [
    "DETR",
    "CocoDetection",
    "DetectionConfig",
    "DetectionTask",
    "Detections",
    "Detector",
    "HungarianMatcher",
    "PostProcess",
    "SetCriterion",
    "build_detection_transforms",
    "build_detector",
    "collate_detection",
    "evaluate_coco",
    "predictions_to_coco_results",
    "summary_text",
]
