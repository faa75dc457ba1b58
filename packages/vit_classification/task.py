"""The classification Task that `vit_training.loop.fit` runs, and single-image prediction.

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

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from timm.data import Mixup
from timm.data.mixup import mixup_target
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vit_training.config import ConfigError
from vit_training.seeding import sample_seed

from .config import ClassificationConfig, DataConfig
from .data import (
    FASHION_MNIST_CLASSES,
    IMAGE_EXTENSIONS,
    MNIST_CLASSES,
    Cifar10Dataset,
    Cifar100Dataset,
    IdxDataset,
    ImageFolderDataset,
    find_fashion_mnist,
    find_mnist,
    load_image,
    read_cifar_pickle,
)
from .metrics import ClassificationMeter, save_confusion_matrix_png, write_predictions_csv
from .model import build_classifier
from .transforms import (
    ImageTransform,
    build_eval_transform,
    build_mixup,
    build_train_transform,
    random_erase,
    random_translate,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AugmentedSamples",
    "ClassificationTask",
    "default_normalization",
    "list_images",
    "predict_images",
    "read_class_names",
    "resolve_config",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma weights: the 1-channel statistics of colour data seen as grey (`datasets.to_channels`).
_LUMA = (0.299, 0.587, 0.114)
# Seed of the fixed subsets `data.num_train_samples` / `num_eval_samples` pick: independent of
# train.seed, so runs with different seeds train and evaluate on the same images.
SUBSET_SEED = 20240601


# ------------------------------------------------------------------------------------------ config
def default_normalization(data_format: str, channels: int) -> tuple[list[float], list[float]]:
    """The (mean, std) of 0..1 pixels of a data format, for `channels` channels.

    Published statistics of the training sets (ImageNet's for ImageFolder, as timm's default).
    Grey statistics are replicated for 3 channels; colour ones become luminance for 1 channel
    (the mean exactly, the std approximately: channel correlations are not known here).
    """
    if data_format == "fashion_mnist":
        mean, std = (0.2860,), (0.3530,)
    elif data_format == "mnist":
        mean, std = (0.1307,), (0.3081,)
    elif data_format == "cifar10":
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    elif data_format == "cifar100":
        mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    elif data_format == "imagefolder":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        raise ValueError(f"data.format={data_format!r} has no default normalisation")
    if len(mean) == channels:
        return list(mean), list(std)
    if channels == 3:
        return list(mean) * 3, list(std) * 3
    return [sum(w * m for w, m in zip(_LUMA, mean, strict=True))], [sum(w * s for w, s in zip(_LUMA, std, strict=True))]


def _imagefolder_dirs(data: DataConfig) -> tuple[Path, Path | None]:
    """(train tree, validation tree or None when it is not there and was not asked for)."""
    if data.train_dir is None and data.root is None:
        raise FileNotFoundError("data.format='imagefolder' needs data.root (holding train/ and val/) or data.train_dir")
    train = Path(data.train_dir) if data.train_dir is not None else Path(data.root) / "train"
    if data.val_dir is not None:
        return train, Path(data.val_dir)
    val = Path(data.root) / "val" if data.root is not None else None
    return train, (val if val is not None and val.is_dir() else None)


def _idx_dir(data: DataConfig) -> Path:
    if data.format == "fashion_mnist":
        return find_fashion_mnist(data.root, download=data.download)
    return find_mnist(data.root, download=data.download)


def _cifar_class_names(data: DataConfig) -> list[str]:
    if data.root is None:
        raise FileNotFoundError(f"data.format={data.format!r} needs data.root (the folder with the python pickles)")
    root = Path(data.root)
    if data.format == "cifar10":
        folder, meta, key = "cifar-10-batches-py", "batches.meta", "label_names"
    else:
        folder, meta = "cifar-100-python", "meta"
        key = "fine_label_names" if data.cifar100_labels == "fine" else "coarse_label_names"
    path = next((p / meta for p in (root, root / folder) if (p / meta).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"data.root={data.root!r}: no {meta} here or in {root / folder}")
    content = read_cifar_pickle(path)
    if key not in content:
        raise ValueError(f"{path}: no field {key!r}")
    return [str(name) for name in content[key]]


def read_class_names(data: DataConfig) -> list[str]:
    """The class names of the data `data` describes, index = label, without loading any image.

    IDX formats have fixed names; ImageFolder lists the training tree's class folders (sorted,
    as `ImageFolderDataset`); CIFAR reads its meta file.
    """
    if data.format == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    if data.format == "mnist":
        return list(MNIST_CLASSES)
    if data.format == "imagefolder":
        train, _ = _imagefolder_dirs(data)
        if not train.is_dir():
            raise FileNotFoundError(f"{train}: image folder does not exist (data.root / data.train_dir)")
        names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise FileNotFoundError(f"{train}: no class folders, expected {train}/<class name>/<images>")
        return names
    return _cifar_class_names(data)


def resolve_config(config: ClassificationConfig) -> ClassificationConfig:
    """A copy of `config` with the values it leaves to the data filled in.

    `data.class_names` (`read_class_names`), `model.num_classes` (their count), `model.in_chans`
    (`data.channels`), `model.img_size` (`data.input_size`) and `data.mean` / `data.std`
    (`default_normalization`). Saved as the run's config.yaml, the result rebuilds the same model
    and names its predictions without the data (for `predict`).

    When the data cannot be read but `model.num_classes` is set (predicting on another machine
    with a hand-written config), the classes are named "0", "1", ... with a warning.

    Raises:
        FileNotFoundError: the class names are needed and the data is not there.
        ConfigError: a set value disagrees with the data (one line naming both).
    """
    model, data = config.model, config.data
    names = list(data.class_names) if data.class_names is not None else None
    if names is None:
        try:
            names = read_class_names(data)
        except (FileNotFoundError, ValueError) as error:
            if model.num_classes is None:
                raise
            logger.warning("class names unavailable (%s); naming the classes by index", error)
            names = [str(index) for index in range(model.num_classes)]
    if model.num_classes is not None and model.num_classes != len(names):
        raise ConfigError(
            f"model.num_classes={model.num_classes} but the data has {len(names)} classes ({', '.join(names[:4])}, ...)"
        )
    if model.in_chans is not None and model.in_chans != data.channels:
        raise ConfigError(
            f"model.in_chans={model.in_chans} but data.channels={data.channels}; the data is converted to the "
            f"model's channels, so set data.channels (or leave model.in_chans null)"
        )
    model = dataclasses.replace(
        model,
        num_classes=len(names),
        in_chans=data.channels,
        img_size=model.img_size if model.img_size is not None else data.input_size,
    )
    mean, std = default_normalization(data.format, data.channels)
    data = dataclasses.replace(
        data,
        class_names=names,
        mean=data.mean if data.mean is not None else mean,
        std=data.std if data.std is not None else std,
    )
    return dataclasses.replace(config, model=model, data=data)


# ------------------------------------------------------------------------------------------ data
def _subset(total: int, limit: int | None) -> np.ndarray | None:
    """`limit` indices out of `total`, a fixed random choice in ascending order; None for all."""
    if limit is None or limit >= total:
        return None
    chosen = np.random.default_rng(SUBSET_SEED).choice(total, size=limit, replace=False)
    return np.sort(chosen)


class AugmentedSamples(Dataset):
    """A classification data set with its transform: item i -> (image (C, H, W), label, i).

    With `seed` set (training), every item reseeds a random transform from (seed, epoch, i) before
    drawing its random crop/flip/colour: the same (epoch, i) always gives the same tensor, in any
    process, DataLoader worker or resumed run. Without it (evaluation) the transform is used as is.

    With `cache`, a deterministic pipeline (evaluation, or training whose transform draws
    nothing: `ImageTransform.is_random` False) runs once per item: the first read keeps the
    tensor, later epochs reuse it. On small images the pipeline is a large share of an epoch
    (Fashion-MNIST's 28 -> 32 px resize and normalisation: 7-8.5 s of the CPU recipe's ~70 s epoch
    on two threads, 0.3 s once cached). The cache lives in the process that reads the items (the main
    process with ``num_workers=0``, else each worker; persistent workers keep theirs between
    epochs) and takes C * H * W * 4 bytes per item (245 MB for 60,000 images of 1 x 32 x 32).

    Attributes:
        source: the underlying data set (returning uint8 (H, W, C) images, no transform).
        classes: class names, index = label.
        targets: (len,) int64 labels of the items.
    """

    def __init__(
        self,
        source: Dataset,
        transform: ImageTransform,
        indices: np.ndarray | None = None,
        seed: int | None = None,
        cache: bool = False,
    ) -> None:
        """
        Args:
            source: an `IdxDataset`, `ImageFolderDataset`, `Cifar10Dataset` or `Cifar100Dataset`
                built without a transform.
            transform: the per-sample pipeline.
            indices: the items of `source` to use (a subset), None for all.
            seed: the run's seed for per-sample reseeding; None for a deterministic (eval) transform.
            cache: keep each transformed item after its first read (see above).

        Raises:
            ValueError: `cache` with a training transform that draws random ops (its output
                must change from epoch to epoch, so it cannot be kept).
        """
        if cache and seed is not None and transform.is_random:
            raise ValueError(
                "data.cache_samples keeps each transformed training image, but this training pipeline draws "
                "random ops (augment.scale / ratio other than [1, 1], hflip > 0 or color_ops > 0): turn the "
                "cache off or the augmentation off"
            )
        self.source = source
        self.transform = transform
        self.indices = indices
        self.seed = seed
        self.epoch = 0
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.classes: list[str] = list(source.classes)
        targets = np.asarray(source.targets)
        self.targets = targets if indices is None else targets[indices]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the augmentation seeds are drawn for (the loop calls it every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.targets)

    def source_index(self, index: int) -> int:
        """The index in `source` of item `index`."""
        return int(self.indices[index]) if self.indices is not None else int(index)

    def sample_name(self, index: int) -> str:
        """The image file of item `index` (ImageFolder), else its index in the source data set."""
        source_index = self.source_index(index)
        samples = getattr(self.source, "samples", None)
        return str(samples[source_index][0]) if samples is not None else str(source_index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        label = int(self.targets[index])
        if self.cache is not None and index in self.cache:
            return self.cache[index], label, int(index)
        image, _label = self.source[self.source_index(index)]
        if self.seed is not None and self.transform.is_random:
            self.transform.set_seed(sample_seed(self.seed, self.epoch, index))
        tensor = self.transform(image)
        if self.cache is not None:
            self.cache[index] = tensor
        return tensor, label, int(index)


def list_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files given directly, or found (recursively, sorted, by `IMAGE_EXTENSIONS`) in folders.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no image.
    """
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise FileNotFoundError(f"{path}: folder holds no image ({' '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    return files


# ------------------------------------------------------------------------------------------ task
def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and torch.compile wrappers; Accelerate's autocast lives on the inner module's forward.
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


class ClassificationTask:
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
    def train_transform(self) -> ImageTransform:
        """The per-sample training pipeline (random resized crop, flip, colour ops, normalise)."""
        data, augment = self.config.data, self.config.augment
        return build_train_transform(
            data.input_size, data.channels, data.mean, data.std,
            scale=tuple(augment.scale), ratio=tuple(augment.ratio), hflip=augment.hflip,
            color_ops=augment.color_ops, color_magnitude=augment.color_magnitude,
            interpolation=data.interpolation,
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
        """The ViT classifier (pretrained weights loaded when `model.pretrained` is set), CPU, fp32."""
        return build_classifier(self.config.model)

    def _source(self, train: bool) -> Dataset | None:
        """The raw data set of a split (no transform), None for a missing ImageFolder validation tree."""
        data = self.config.data
        if data.format in ("fashion_mnist", "mnist"):
            classes = FASHION_MNIST_CLASSES if data.format == "fashion_mnist" else MNIST_CLASSES
            return IdxDataset(_idx_dir(data), "train" if train else "test", classes=classes, channels=data.channels)
        if data.format == "imagefolder":
            train_dir, val_dir = _imagefolder_dirs(data)
            folder = train_dir if train else val_dir
            if folder is None:
                return None
            return ImageFolderDataset(folder, channels=data.channels, background=data.background)
        if data.root is None:
            raise FileNotFoundError(f"data.format={data.format!r} needs data.root (the folder with the python pickles)")
        split = "train" if train else "test"
        if data.format == "cifar10":
            return Cifar10Dataset(data.root, split, channels=data.channels)
        return Cifar100Dataset(data.root, split, labels=data.cifar100_labels, channels=data.channels)

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
        source = self._source(train=True)
        self._check_classes(source, "training")
        indices = _subset(len(source), self.config.data.num_train_samples)
        return AugmentedSamples(source, self.train_transform(), indices, seed=self.config.train.seed,
                                cache=self.config.data.cache_samples)

    def build_eval_dataset(self) -> AugmentedSamples | None:
        """The evaluation set (IDX/CIFAR test split, ImageFolder val tree), or None when there is none."""
        source = self._source(train=False)
        if source is None:
            return None
        self._check_classes(source, "evaluation")
        indices = _subset(len(source), self.config.data.num_eval_samples)
        return AugmentedSamples(source, self.eval_transform(), indices, seed=None, cache=self.config.data.cache_samples)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """(training set, evaluation set or None); items are (image (C, H, W), label, index)."""
        train = self.build_train_dataset()
        evaluation = self.build_eval_dataset()
        if evaluation is None:
            logger.warning("no validation images found (data.root/val or data.val_dir): training without evaluation")
        return train, evaluation

    def collate_fn(self, train: bool) -> Callable[[list[Any]], Any] | None:
        """The default collation: (images (B, C, H, W), labels (B,), indices (B,))."""
        return None

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

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of one batch (soft targets under mixup, label smoothing either way).

        The batch-level augmentations run here, on the device, in this order: random
        translation (`augment.translate_px`), random erasing (`augment.erase_prob`), then
        Mixup/CutMix.

        Args:
            model: the (prepared) classifier.
            batch: (images (B, C, H, W), labels (B,), indices (B,)) on the device.

        Returns:
            (scalar loss, {"acc": top-1 of the batch against its unmixed labels}).
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
        return loss, {"acc": float(accuracy)}

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
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        images, labels = batch[0][:max_images], batch[1][:max_images]
        net = _unwrap(model)
        was_training = net.training
        net.eval()
        probs = net(images).float().softmax(dim=1).cpu()
        net.train(was_training)
        mean = torch.tensor(self.config.data.mean).view(-1, 1, 1)
        std = torch.tensor(self.config.data.std).view(-1, 1, 1)
        pictures = (images.float().cpu() * std + mean).clamp(0, 1)
        names = self.class_names
        count = pictures.shape[0]
        columns = min(4, count)
        rows = math.ceil(count / columns)
        figure = Figure(figsize=(2.4 * columns, 2.6 * rows), dpi=100)
        FigureCanvasAgg(figure)
        for position in range(count):
            axes = figure.add_subplot(rows, columns, position + 1)
            picture = pictures[position].permute(1, 2, 0).numpy()
            if picture.shape[2] == 1:
                axes.imshow(picture[:, :, 0], cmap="gray", vmin=0, vmax=1)
            else:
                axes.imshow(picture)
            predicted = int(probs[position].argmax())
            truth = int(labels[position])
            colour = "tab:green" if predicted == truth else "tab:red"
            axes.set_title(f"{names[predicted][:18]} ({probs[position, predicted]:.2f})\ntrue: {names[truth][:18]}",
                           fontsize=8, color=colour)
            axes.axis("off")
        figure.tight_layout()
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(output_dir / "predictions.png")


# ------------------------------------------------------------------------------------------ predict
@torch.no_grad()
def predict_images(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    cfg: ClassificationConfig,
    device: torch.device | str,
    batch_size: int = 64,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Classify image files (or every image in given folders) with the evaluation transform.

    Images are read like `ImageFolderDataset` reads them (`datasets.load_image`: any PIL mode,
    converted to `data.channels`, transparency over `data.background`).

    Args:
        model: the classifier (moved to `device` here, put in eval mode).
        paths: image files and/or folders.
        cfg: the resolved config (`resolve_config`) the model was trained with.
        device: where to run.
        batch_size: images per forward pass.
        class_names: index = label; default `cfg.data.class_names`, else "0", "1", ...

    Returns:
        one dict per image, in the order found: {"sample": path, "predicted_index",
        "predicted_name", "score" (probability), "top5": [(name, probability), ...]}, the keys of
        `metrics.write_predictions_csv`.

    Raises:
        FileNotFoundError: a path is missing or a folder holds no image.
        ValueError: a file is not a readable image (one line naming it).
    """
    data = cfg.data
    if data.mean is None or data.std is None:
        raise ValueError("predict_images needs a resolved config (data.mean / data.std set): use resolve_config")
    transform = build_eval_transform(
        data.input_size, data.channels, data.mean, data.std, crop_pct=data.crop_pct, interpolation=data.interpolation
    )
    files = list_images(paths)
    model = model.to(device).eval()
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = torch.stack([transform(load_image(path, data.channels, data.background)) for path in chunk])
        probs = model(images.to(device)).float().softmax(dim=1).cpu()
        if class_names is not None:
            names = list(class_names)
        elif data.class_names is not None:
            names = list(data.class_names)
        else:
            names = [str(index) for index in range(probs.shape[1])]
        order = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, :5]
        for path, row, best in zip(chunk, probs, order, strict=True):
            results.append({
                "sample": str(path),
                "predicted_index": int(best[0]),
                "predicted_name": names[int(best[0])],
                "score": float(row[best[0]]),
                "top5": [(names[int(c)], float(row[c])) for c in best],
            })
    return results
