"""vit_detection: DETR-style object detection on the shared ViT backbone.

Modules: `box_ops`, `position_encoding`, `neck` (single-scale projection, simple feature
pyramid), `transformer`, `detr` (the detector), `matcher` (Hungarian), `criterion` (set loss),
`postprocess`, `datasets` (COCO JSON through pycocotools), `transforms` (albumentations),
`coco_eval`, `prepare` (demo data), `config` and `task` (the Task `vit_training.fit` runs).
"""
