"""The classification Task that `vit_training.loop.fit` runs (prediction on files: `vit_classification.predict`).

The data sets, their normalisation and `resolve_config` live in `vit_classification.data`, the
pictures in `vit_classification.visualize`.

Batches are ``(images, labels, indices)``: images float32 (B, C, H, W) normalised, labels int64
(B,), indices int64 (B,) positions in the data set (so evaluation can name each sample's file
whatever order the processes gathered them in).

Per-sample augmentation is seeded from (train.seed, epoch, index): the loop calls
`set_epoch(epoch)` on the training set before each epoch and the sample at `index` is augmented
with the same random draws whichever process, worker or resumed run loads it.

Mixup/CutMix run per batch inside `loss`, on the device, drawing from numpy's global generator
(timm's Mixup does); Accelerate's `save_state` saves that generator, so resumed runs continue it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from timm.data import Mixup
from timm.data.mixup import mixup_target
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vit_training.task import Task

from .config import ClassificationConfig
from .data import AugmentedSamples, check_samples, open_split, resolve_config, subset_indices
from .metrics import ClassificationMeter, write_predictions_csv
from .model import build_classifier
from .transforms import (
    DraftCropTransform,
    ImageTransform,
    build_eval_transform,
    build_mixup,
    build_train_transform,
    random_erase,
    random_translate,
)
from .visualize import save_confusion_matrix_png, save_prediction_grid

logger = logging.getLogger(__name__)

__all__ = ["ClassificationTask"]


# ------------------------------------------------------------------------------------------ task
def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


class ClassificationTask(Task):
    """Image classification on the shared ViT, as a `vit_training.task.Task`.

    Args:
        config: the run's config; it is resolved at construction (`resolve_config`): class
            count, channels, image size and normalisation are filled in from the data, and the
            result is `self.config`, the config to pass to `fit` and to save.

    Attributes:
        config: the resolved config.
        class_names: index = label.
    """

    def __init__(self, config: ClassificationConfig) -> None:
        resolved = resolve_config(config)
        self.config = resolved
        self.mixup: Mixup | None = build_mixup(
            resolved.model.num_classes,
            mixup_alpha=resolved.augment.mixup_alpha,
            cutmix_alpha=resolved.augment.cutmix_alpha,
            label_smoothing=resolved.augment.label_smoothing,
            prob=resolved.augment.mixup_prob,
            switch_prob=resolved.augment.mixup_switch_prob,
            mode=resolved.augment.mixup_mode,
        )

    # -------------------------------------------------------------------------------- names
    @property
    def num_classes(self) -> int:
        return int(self.config.model.num_classes)

    @property
    def class_names(self) -> list[str]:
        """Class names, index = label (`data.class_names` of the resolved config)."""
        return list(self.config.data.class_names)

    # -------------------------------------------------------------------------------- transforms
    def train_transform(self) -> ImageTransform | DraftCropTransform:
        """The per-sample training pipeline (random resized crop, flip, colour ops, normalise)."""
        data, augment = self.config.data, self.config.augment
        return build_train_transform(
            data.input_size, data.channels, data.mean, data.std,
            scale=tuple(augment.scale), ratio=tuple(augment.ratio), hflip=augment.hflip,
            color_ops=augment.color_ops, color_magnitude=augment.color_magnitude,
            interpolation=data.interpolation, fast_decode=data.fast_decode,
        )

    def eval_transform(self) -> ImageTransform:
        """The deterministic evaluation / prediction pipeline (resize, center crop, normalise)."""
        data = self.config.data
        return build_eval_transform(
            data.input_size, data.channels, data.mean, data.std, crop_pct=data.crop_pct,
            interpolation=data.interpolation,
        )

    # -------------------------------------------------------------------------------- Task
    def build_model(self) -> nn.Module:
        """The ViT classifier (pretrained weights loaded when `model.backbone.pretrained` is set), CPU, fp32."""
        return build_classifier(self.config.model)

    def _source(self, train: bool) -> Dataset | None:
        """The raw data set of a split (no transform), None for a missing ImageFolder validation tree."""
        return open_split(self.config.data, train)

    def _check_classes(self, source: Dataset, split: str) -> None:
        """The split's classes must be the configured ones, in the same order (labels are indices)."""
        found = list(source.classes)
        if found != self.class_names:
            where = getattr(source, "root", None) or split
            raise ValueError(
                f"{where}: the {split} data has {len(found)} classes {found[:4]}... but the config has "
                f"{self.num_classes} {self.class_names[:4]}... (data.class_names / model.num_classes; "
                f"ImageFolder trees need the same class folders)"
            )

    def build_train_dataset(self) -> AugmentedSamples:
        """The training set: per-sample seeded augmentation, `data.num_train_samples` subset."""
        data = self.config.data
        source = self._source(train=True)
        self._check_classes(source, "training")
        indices = subset_indices(len(source), data.num_train_samples)
        # Every file is checked before the first step, so a bad one never stops a run mid-epoch.
        indices = check_samples(source, indices, "training", data.on_bad_sample, self.config.train.output_dir)
        return AugmentedSamples(source, self.train_transform(), indices, seed=self.config.train.seed,
                                cache=data.cache_samples, skip_unreadable=data.on_bad_sample == "skip")

    def build_eval_dataset(self) -> AugmentedSamples | None:
        """The evaluation set (IDX/CIFAR test split, ImageFolder val tree), or None when there is none."""
        source = self._source(train=False)
        if source is None:
            return None
        self._check_classes(source, "evaluation")
        indices = subset_indices(len(source), self.config.data.num_eval_samples)
        check_samples(source, indices, "evaluation")
        return AugmentedSamples(source, self.eval_transform(), indices, seed=None, cache=self.config.data.cache_samples)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """(training set, evaluation set or None); items are (image (C, H, W), label, index)."""
        train = self.build_train_dataset()
        evaluation = self.build_eval_dataset()
        if evaluation is None:
            logger.warning("no validation images found (data.root/val or data.val_dir): training without evaluation")
        return train, evaluation

    def _mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup/CutMix a batch: (B, C, H, W), (B,) -> mixed images, soft targets (B, K).

        timm's Mixup pairs sample i with B-1-i and needs B even; an odd batch (a last partial
        batch when the loader keeps it) mixes its first B-1 samples and gives the last one its
        label-smoothed one-hot target unmixed.
        """
        even = images.shape[0] - images.shape[0] % 2
        if even == images.shape[0]:
            return self.mixup(images, labels)
        mixed, targets = self.mixup(images[:even], labels[:even]) if even else (images[:0], None)
        rest = mixup_target(labels[even:], self.num_classes, 1.0, self.config.augment.label_smoothing)
        targets = rest if targets is None else torch.cat([targets, rest])
        return torch.cat([mixed, images[even:]]), targets

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of one batch (soft targets under mixup, label smoothing either way).

        The batch-level augmentations run here, on the device, in this order: random
        translation (`augment.translate_px`), random erasing (`augment.erase_prob`), then
        Mixup/CutMix.

        Args:
            model: the (prepared) classifier.
            batch: (images (B, C, H, W), labels (B,), indices (B,)) on the device.

        Returns:
            (scalar loss, {"acc": top-1 of the batch against its unmixed labels, a 0-d device tensor
            the loop reads only at log steps}).
        """
        images, labels = batch[0], batch[1]
        # Each is a no-op at 0. Erasing works in place, on the collated batch (a fresh tensor,
        # never the dataset's cached samples) or on the translated copy.
        images = random_translate(images, self.config.augment.translate_px)
        images = random_erase(images, self.config.augment.erase_prob)
        if self.mixup is not None:
            images, targets = self._mix(images, labels)
            logits = model(images)
            # Soft-target cross-entropy (timm's SoftTargetCrossEntropy), in fp32 under autocast.
            loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.augment.label_smoothing)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, {"acc": accuracy}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: DataLoader,
        accelerator: Accelerator,
        output_dir: Path,
        predictions_path: Path | None = None,
    ) -> dict[str, float]:
        """Top-1, top-5, mean per-class accuracy and loss over the whole (sharded) `loader`.

        Logits, labels and indices are gathered with `gather_for_metrics` batch by batch (so the
        samples padded onto the last batch count once) and every process computes the same
        metrics from them. The main process writes ``confusion_matrix.png`` and
        ``per_class_accuracy.json`` to `output_dir`, and the predictions CSV when asked.

        Args:
            model: the prepared classifier.
            loader: the prepared evaluation loader of (images, labels, indices) batches.
            accelerator: the run's accelerator.
            output_dir: where the files go.
            predictions_path: also write one CSV row per sample there (`metrics.write_predictions_csv`).

        Returns:
            {"top1", "top5", "mean_class_acc", "loss"}: accuracies in [0, 1], loss the mean
            plain cross-entropy (no smoothing).
        """
        was_training = model.training
        model.eval()
        meter = ClassificationMeter(self.num_classes)
        for batch in loader:
            images, labels = batch[0], batch[1]
            indices = batch[2] if len(batch) > 2 else None
            logits = model(images).float()
            if indices is None:
                logits, labels = accelerator.gather_for_metrics((logits, labels))
            else:
                logits, labels, indices = accelerator.gather_for_metrics((logits, labels, indices))
            meter.update(logits, labels, indices)
        model.train(was_training)
        result = meter.compute()
        metrics = {key: float(result[key]) for key in ("top1", "top5", "mean_class_acc", "loss")}
        if accelerator.is_main_process:
            output_dir = Path(output_dir)
            self._write_evaluation(output_dir, result)
            if predictions_path is not None:
                self._write_predictions(Path(predictions_path), meter, getattr(loader, "dataset", None))
        return metrics

    def _write_evaluation(self, output_dir: Path, result: dict[str, Any]) -> None:
        names = self.class_names
        matrix = result["confusion_matrix"]
        save_confusion_matrix_png(matrix, names, output_dir / "confusion_matrix.png")
        counts = matrix.sum(dim=1)
        per_class = [
            {"index": index, "name": name, "count": int(counts[index]),
             "accuracy": _json_number(float(result["per_class_accuracy"][index]))}
            for index, name in enumerate(names)
        ]
        summary = {key: _json_number(float(result[key])) for key in ("top1", "top5", "mean_class_acc", "loss")}
        text = json.dumps({**summary, "classes": per_class}, indent=1)
        (output_dir / "per_class_accuracy.json").write_text(text + "\n")

    def _write_predictions(self, path: Path, meter: ClassificationMeter, dataset: Any) -> None:
        names = self.class_names
        labels, tops, probs = meter.labels, meter.top_indices, meter.top_probs
        indices = meter.indices
        rows = []
        for row in range(labels.numel()):
            index = int(indices[row]) if indices is not None else row
            sample = dataset.sample_name(index) if hasattr(dataset, "sample_name") else str(index)
            top = [(names[int(c)], float(p)) for c, p in zip(tops[row], probs[row], strict=True)]
            rows.append({
                "sample": sample,
                "true_index": int(labels[row]),
                "true_name": names[int(labels[row])],
                "predicted_index": int(tops[row, 0]),
                "predicted_name": names[int(tops[row, 0])],
                "score": float(probs[row, 0]),
                "top5": top,
            })
        write_predictions_csv(path, rows)

    @torch.no_grad()
    def visualize(self, model: nn.Module, batch: Any, output_dir: Path, max_images: int = 16) -> None:
        """Write ``predictions.png``: up to `max_images` images of `batch` with predicted and true labels.

        Titles read "predicted (probability)" over "true: name", green when right, red when wrong.
        """
        images, labels = batch[0][:max_images], batch[1][:max_images]
        net = extract_model_from_parallel(model, keep_torch_compile=False)
        was_training = net.training
        net.eval()
        probs = net(images).float().softmax(dim=1).cpu()
        net.train(was_training)
        mean = torch.tensor(self.config.data.mean).view(-1, 1, 1)
        std = torch.tensor(self.config.data.std).view(-1, 1, 1)
        pictures = (images.float().cpu() * std + mean).clamp(0, 1)
        save_prediction_grid(pictures, probs, labels.cpu(), self.class_names, Path(output_dir) / "predictions.png")

