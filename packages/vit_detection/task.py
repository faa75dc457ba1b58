"""The detection Task that `vit_training.loop.fit` runs (prediction on files: `vit_detection.predict`).

Batches are ``(images, pad_mask, targets)`` from `collate_detection`: images float32
(B, 3, H, W) normalised and zero-padded bottom/right to a multiple of the patch size, pad_mask
bool (B, H, W) True on padding, targets a list of B dicts ("boxes" (T, 4) normalised cxcywh of
the unpadded augmented image, "labels" (T,) contiguous, "image_id", "orig_size", "size"); see
`vit_detection.data`.

The criterion (matcher + set loss) lives on the task, not in the model: the model's state dict
is then only the network, and the exported ``model.safetensors`` loads into `build_detector`.
Evaluation post-processes every query (no threshold), converts to COCO results with the data
set's own category ids, gathers them from every process and runs pycocotools' COCOeval.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vit_training.config import ConfigError
from vit_training.data import handle_bad_samples, subset_indices
from vit_training.task import Task

from .coco_eval import (
    CocoResultCollector,
    evaluate_coco,
    predictions_to_coco_results,
    summary_text,
    write_coco_results,
)
from .config import DetectionConfig, DetectionDataConfig
from .criterion import SetCriterion
from .data import CocoDetection, collate_detection, load_coco_json, pad_divisor
from .matcher import HungarianMatcher
from .model import build_detector
from .postprocess import PostProcess
from .transforms import DetectionTransform, build_detection_transforms
from .visualize import denormalize, save_overlays, target_boxes_xyxy

logger = logging.getLogger(__name__)

__all__ = ["DetectionTask", "data_path", "resolve_config"]

# The losses logged per step besides the total (last decoder layer only: the aux ones repeat them).
# The last decoder layer's terms, and the two-stage encoder proposals' (when the model has them).
LOGGED_LOSSES = ("loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error",
                 "loss_ce_enc", "loss_giou_enc")


def data_path(data: DetectionDataConfig, path: str) -> Path:
    """`path` of the data section, relative to `data.root` unless absolute."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(data.root) / candidate


def resolve_config(config: DetectionConfig) -> DetectionConfig:
    """A copy of `config` with what it leaves to the data filled in.

    `data.class_names` and `data.category_ids` from the training annotations' categories (sorted
    by id, as `CocoDetection` numbers its labels), `model.num_classes` from their count, and
    `eval.max_dets` raised to the detections per image (`model.num_queries`, or
    `eval.top_k`). Saved as the run's config.yaml, the result
    rebuilds the model and names its classes without the data (for `predict`).

    Raises:
        FileNotFoundError: the class names are needed and the annotations are not there.
        ConfigError: a set value disagrees with the data (one line naming both).
    """
    model, data = config.model, config.data
    names, ids = data.class_names, data.category_ids
    if names is None or ids is None:
        annotations = data_path(data, data.train_annotations)
        if not annotations.is_file():
            if model.num_classes is None:
                raise FileNotFoundError(
                    f"{annotations}: training annotations not found (data.root / data.train_annotations); "
                    f"run `python tasks/detect.py prepare` for the demo data"
                )
            logger.warning("%s not found; naming the %d classes by index", annotations, model.num_classes)
            found_names = [str(i) for i in range(model.num_classes)]
            found_ids = list(range(1, model.num_classes + 1))
        else:
            categories = sorted(load_coco_json(annotations)["categories"], key=lambda c: c["id"])
            found_names = [str(c["name"]) for c in categories]
            found_ids = [int(c["id"]) for c in categories]
        names = list(names) if names is not None else found_names
        ids = list(ids) if ids is not None else found_ids
    if len(names) != len(ids):
        raise ConfigError(f"data.class_names has {len(names)} names but data.category_ids has {len(ids)} ids")
    if model.num_classes is not None and model.num_classes != len(names):
        raise ConfigError(
            f"model.num_classes={model.num_classes} but the data has {len(names)} categories ({', '.join(names[:4])}, ...)"
        )
    model = dataclasses.replace(model, num_classes=len(names))
    data = dataclasses.replace(data, class_names=list(names), category_ids=list(ids))
    per_image = model.num_queries if config.eval.top_k is None else config.eval.top_k
    evaluation = dataclasses.replace(config.eval, max_dets=max(config.eval.max_dets, per_image))
    return dataclasses.replace(config, model=model, data=data, eval=evaluation)


class _Subset(Dataset):
    """A fixed subset of a `CocoDetection` that passes `set_epoch` through (for augmentation seeds)."""

    def __init__(self, dataset: CocoDetection, indices: np.ndarray) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


def _subset(dataset: CocoDetection, limit: int | None) -> Dataset:
    chosen = subset_indices(len(dataset), limit)
    return dataset if chosen is None else _Subset(dataset, chosen)


# ------------------------------------------------------------------------------------------ task
class DetectionTask(Task):
    """DETR-style object detection on the shared ViT, as a `vit_training.task.Task`.

    Args:
        config: the run's config; resolved at construction (`resolve_config`): class names,
            category ids and class count come from the training annotations. The result is
            `self.config`, the config to pass to `fit` and to save.
    """

    def __init__(self, config: DetectionConfig) -> None:
        self.config = resolve_config(config)
        loss = self.config.loss
        class_score = self.config.model.class_score
        focal = {"focal_alpha": loss.focal_alpha, "focal_gamma": loss.focal_gamma}
        matcher = HungarianMatcher(cost_class=loss.cost_class, cost_bbox=loss.cost_bbox, cost_giou=loss.cost_giou,
                                   class_score=class_score, **focal)
        self.criterion = SetCriterion(
            self.num_classes, matcher, eos_coef=loss.eos_coef,
            weight_dict={"loss_ce": loss.ce_weight, "loss_bbox": loss.bbox_weight, "loss_giou": loss.giou_weight},
            aux_loss=self.config.model.aux_loss, class_score=class_score, **focal,
        )
        self.postprocess = PostProcess(top_k=self.config.eval.top_k, class_score=class_score)
        self._eval_set: CocoDetection | None = None

    # -------------------------------------------------------------------------------- names
    @property
    def num_classes(self) -> int:
        return int(self.config.model.num_classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.data.class_names)

    @property
    def label_to_category_id(self) -> list[int]:
        return list(self.config.data.category_ids)

    @property
    def patch_size(self) -> int:
        """Padding multiple of the batches: the backbone's patch size."""
        return self.config.model.backbone.resolved_patch_size

    # -------------------------------------------------------------------------------- data
    def transform(self, train: bool) -> DetectionTransform:
        data = self.config.data
        return build_detection_transforms(
            train, train_sizes=data.train_sizes, eval_size=data.eval_size, max_size=data.max_size,
            hflip=data.hflip, vflip=data.vflip, crop_prob=data.crop_prob, crop_min_scale=data.crop_min_scale,
            min_visibility=data.min_visibility, mean=data.mean, std=data.std,
        )

    def _dataset(self, train: bool) -> CocoDetection:
        data = self.config.data
        images, annotations = (data.train_images, data.train_annotations) if train else (data.val_images,
                                                                                        data.val_annotations)
        dataset = CocoDetection(
            data_path(data, images), data_path(data, annotations), transform=self.transform(train),
            seed=self.config.train.seed if train else None,
        )
        if dataset.label_to_category_id != self.label_to_category_id:
            raise ValueError(
                f"{dataset.annotation_file}: categories {dataset.label_to_category_id[:6]}... differ from the "
                f"config's data.category_ids {self.label_to_category_id[:6]}... (train and val need the same categories)"
            )
        return dataset

    def build_train_dataset(self) -> Dataset:
        """The training split, every image checked before the first step (see `_validate`)."""
        dataset = self._dataset(train=True)
        self._validate(dataset, "training")
        return _subset(dataset, self.config.data.num_train_samples)

    def build_eval_dataset(self) -> Dataset | None:
        """The evaluation split (None when the config names none), every image and box checked."""
        if self.config.data.val_annotations is None:
            return None
        self._eval_set = self._dataset(train=False)
        self._validate(self._eval_set, "evaluation")
        return _subset(self._eval_set, self.config.data.num_eval_samples)

    def _validate(self, dataset: CocoDetection, split: str) -> None:
        """Check a split up front so a bad file never stops a run mid-epoch or at its first evaluation.

        Every image's header (exists, decodable format, size = the JSON's); for evaluation also
        every box (positive size, inside its image: the metric would silently differ otherwise).
        Training images that fail are an error, or under ``data.on_bad_sample=skip`` left out and
        listed in the run folder. Training also warns when `model.num_queries` is below the most
        objects in one image: DETR predicts at most one object per query.
        """
        data = self.config.data
        problems = dataset.check_images()
        if split == "evaluation":
            problems += dataset.box_problems
        skipped = handle_bad_samples(problems, split="training" if split == "training" else "evaluation",
                                     total=len(dataset), on_bad_sample=data.on_bad_sample,
                                     output_dir=self.config.train.output_dir)
        if skipped:
            dataset.drop_images(skipped)
        if split != "training":
            return
        dataset.skip_unreadable = data.on_bad_sample == "skip"
        most, queries = dataset.max_objects(), self.config.model.num_queries
        if queries < most:
            logger.warning(
                "%s: an image has %d objects but model.num_queries=%d: DETR finds at most one object per "
                "query, so recall is capped; set model.num_queries to at least %d",
                dataset.annotation_file, most, queries, most,
            )

    # -------------------------------------------------------------------------------- Task
    def build_model(self) -> nn.Module:
        return build_detector(self.config.model)

    def collate_fn(self, train: bool) -> Callable[[list[Any]], Any]:
        # A partial of a module-level function pickles, so DataLoader workers can use it.
        divisor = pad_divisor(self.patch_size, self.config.data.pad_size_multiple)
        return functools.partial(collate_detection, size_divisor=divisor)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DETR's weighted set loss of one batch (images (B, 3, H, W), pad_mask (B, H, W), B target dicts)
        and its logged parts as 0-d device tensors (the loop reads them only at log steps)."""
        images, pad_mask, targets = batch
        # The collate's host copy of each image's size: the token grids need no device read.
        sizes = [t["image_hw"] for t in targets] if all("image_hw" in t for t in targets) else None
        outputs = model(images, pad_mask, targets, image_sizes=sizes)
        losses = self.criterion.to(images.device)(outputs, targets)
        total = self.criterion.total(losses)
        return total, {key: losses[key].detach() for key in LOGGED_LOSSES if key in losses}

    @torch.no_grad()
    def predict_batch(self, model: nn.Module, images: torch.Tensor, pad_mask: torch.Tensor,
                      orig_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Every query of every image: "scores" (Q,), "labels" (Q,) contiguous, "boxes" (Q, 4)
        absolute xyxy in the pixels of `orig_sizes` ((B, 2) height, width)."""
        outputs = model(images, pad_mask)
        # Post-processing in fp32 whatever the autocast: scores and boxes go to COCOeval as floats.
        outputs = {key: outputs[key].float() for key in ("pred_logits", "pred_boxes")}
        return self.postprocess(outputs, orig_sizes.to(outputs["pred_boxes"].device))

    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, output_dir: Path,
                 results_path: Path | None = None) -> dict[str, float]:
        """COCOeval box metrics over `loader` (every process gets the same numbers).

        The 12 standard numbers at 100 detections per image (``AP``, ``AP50``, ... ``AR100``, comparable
        with published COCO results) always; when `eval.max_dets` is not 100, the same numbers at it
        too, labelled ``AP@maxDets300`` ... (`raised_stat_names`). Writes (main process)
        ``coco_results.json`` (the COCO submission format, or `results_path`) and ``coco_eval.txt``
        (COCOeval's lines, the standard 12 first) into `output_dir`.
        """
        collector = CocoResultCollector()
        for images, pad_mask, targets in loader:
            orig_sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
            predictions = self.predict_batch(model, images, pad_mask, orig_sizes)
            predictions = [{key: value.cpu() for key, value in p.items()} for p in predictions]
            image_ids = [int(t["image_id"]) for t in targets]
            per_image = [predictions_to_coco_results([i], [p], self.label_to_category_id)
                         for i, p in zip(image_ids, predictions, strict=True)]
            collector.update(image_ids, per_image, accelerator)
        coco_gt = self._ground_truth(loader)
        stats = evaluate_coco(coco_gt, collector.results, max_dets=self.config.eval.max_dets,
                              image_ids=collector.image_ids)
        if accelerator.is_main_process:
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            write_coco_results(results_path or output_dir / "coco_results.json", collector.results)
            (output_dir / "coco_eval.txt").write_text(summary_text(stats) + "\n")
            logger.info("COCO box evaluation on %d images:\n%s", len(collector), summary_text(stats))
        return stats

    def _ground_truth(self, loader: DataLoader):
        dataset = self._eval_set
        if dataset is None:
            inner = getattr(loader, "dataset", None)
            dataset = getattr(inner, "dataset", inner)
        if not isinstance(dataset, CocoDetection):
            raise TypeError("evaluate needs the loader of the task's evaluation set (a CocoDetection)")
        return dataset.coco_gt

    def visualize(self, model: nn.Module, batch: Any, output_dir: Path) -> None:
        """PNG overlays of the first `eval.overlay_images` images: predictions and ground truth."""
        count = self.config.eval.overlay_images
        if count == 0:
            return
        images, pad_mask, targets = batch
        images, pad_mask, targets = images[:count], pad_mask[:count], targets[:count]
        sizes = torch.stack([torch.as_tensor(t["size"]) for t in targets])
        predictions = self.predict_batch(model, images, pad_mask, sizes)
        pictures, gt_boxes = [], []
        for image, target in zip(images, targets, strict=True):
            h, w = (int(v) for v in target["size"])
            pictures.append(denormalize(image[:, :h, :w].float().cpu(), self.config.data.mean, self.config.data.std))
            gt_boxes.append(target_boxes_xyxy(target["boxes"].float().cpu(), (h, w)))
        save_overlays(
            pictures, [{k: v.cpu() for k, v in p.items()} for p in predictions], Path(output_dir) / "overlays",
            self.class_names, score_threshold=self.config.eval.score_threshold,
            names=[f"image_{int(t['image_id'])}" for t in targets], gt_boxes=gt_boxes,
        )
