"""The classification config: one dataclass schema, loaded with `vit_training.config.load_config`.

    config = load_config(ClassificationConfig, "configs/classification/fashion_mnist_cpu.yaml",
                         ["train.epochs=3", "data.num_train_samples=2000"])

Sections: `model` (`model.backbone`: which ViT, regularisation, pretrained weights; the head), `data` (format, where,
input size, channels, normalisation), `augment` (per-sample crop/flip/colour, per-batch
mixup/cutmix, label smoothing) and the generic `optim`, `schedule` and `train` of `vit_training`.

Fields left None are filled from elsewhere by `ClassificationTask` (e.g. `model.num_classes` from
the data's class list, `model.backbone.in_chans` from `data.channels`, `data.mean` from the data format), so a YAML file states only what it means.
Range checks live in `__post_init__`; their messages start with the field name, so a load error
reads ``configs/x.yaml: augment.hflip=1.5 must lie in [0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vit_backbone import BackboneConfig
from vit_training import OptimizerConfig, ScheduleConfig, TrainConfig, check_choices

DataFormat = Literal["fashion_mnist", "mnist", "imagefolder", "cifar10", "cifar100"]
Channels = Literal[1, 3]
Interpolation = Literal["bilinear", "bicubic"]
MixupMode = Literal["batch", "pair", "elem"]
CifarLabels = Literal["fine", "coarse"]
OnBadSample = Literal["error", "skip"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class ModelConfig:
    """The classifier (`vit_classification.model.build_classifier`): a ViT backbone and its linear head.

    Args:
        backbone: the ViT and its pretrained weights (`vit_backbone.BackboneConfig`: preset,
            architecture overrides, pooling, drop rates, attention kernel, LayerScale, gradient
            checkpointing, checkpoint file). `ClassificationTask` fills `backbone.in_chans` and
            `backbone.img_size` from `data.channels` and `data.input_size` when they are null, and
            rejects values that disagree with the data.
        num_classes: classes of the linear head; None takes the data's class count.
    """

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(preset="vit_micro_patch4_28"))
    num_classes: int | None = None

    def __post_init__(self) -> None:
        _check(self.num_classes is None or self.num_classes >= 1,
               f"num_classes={self.num_classes} must be >= 1 (or null for the data's class count)")
        _check(self.backbone.in_chans in (None, 1, 3),
               f"backbone.in_chans={self.backbone.in_chans} must be 1 or 3 (or null)")
        _check(self.backbone.global_pool != "none",
               "backbone.global_pool='none' gives one prediction per token; a classifier pools: 'token' or 'avg'")


@dataclass
class DataConfig:
    """Where the images come from and how they become model inputs.

    Args:
        format: ``"fashion_mnist"`` / ``"mnist"`` (IDX files), ``"imagefolder"``
            (``<dir>/<class>/<image>``), ``"cifar10"`` / ``"cifar100"`` (the python pickles).
        root: the data directory. For Fashion-MNIST None searches the Debian package's location
            and the download cache; for ImageFolder the folder holding ``train/`` and ``val/``.
        train_dir, val_dir: ImageFolder only: the two class-folder trees, when they are not
            ``root/train`` and ``root/val``. Without a validation tree training runs without evaluation.
        download: Fashion-MNIST / MNIST only: fetch with torchvision when not found (opt-in).
        cifar100_labels: ``"fine"`` (100 classes) or ``"coarse"`` (20).
        input_size: model input side in pixels (crops are resized to it).
        channels: 1 or 3 channels fed to the model; grey data is replicated for 3, colour data
            becomes luminance for 1.
        mean, std: per-channel normalisation of 0..1 pixels, `channels` values each; None takes
            the data set's statistics (ImageNet's for ImageFolder). Pretrained weights expect
            their own: 0.5 for timm augreg/JAX weights, ImageNet's for DeiT/MAE/torchvision.
        crop_pct: evaluation resizes the shorter side to input_size / crop_pct, then center-crops
            (timm's rule; 0.875 for ImageNet at 224, 1.0 keeps the whole image).
        interpolation: resize interpolation, training and evaluation.
        background: grey level under transparent pixels of ImageFolder images.
        class_names: the class names, index = label; None reads them from the data (fixed for
            IDX, the sorted class folders for ImageFolder, the meta file for CIFAR). The saved
            run config holds them, so `predict` names its classes without the data.
        num_train_samples, num_eval_samples: use a fixed random subset of this many samples
            (same subset on every run and process); None uses all. For smoke tests and demos.
        cache_samples: keep every transformed image in memory after its first read, so later
            epochs skip decoding and the pipeline (`AugmentedSamples`). Only for data that fits
            in memory as float32 model inputs, and only with a deterministic training pipeline
            (no random crop, flip or colour op); the evaluation set is always deterministic.
        fast_decode: ImageFolder training images are read through
            `vit_classification.transforms.DraftCropTransform`: the random crop is sampled from the
            file's header first and only what it needs is decoded (JPEG DCT-domain reduction when
            the crop is large, OpenCV's decoder); the same crop statistics and augmentations, a
            different random stream than the default pipeline (benchmarks/loader_throughput.py).
        on_bad_sample: what to do with an ImageFolder training image that is missing or cannot
            be read: ``"error"`` stops before the first step naming the file; ``"skip"`` leaves it
            out with a warning and lists it in ``skipped_samples.txt`` of the run folder.
            Evaluation images are always checked and never skipped.
    """

    format: DataFormat = "fashion_mnist"
    root: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    download: bool = False
    cifar100_labels: CifarLabels = "fine"
    input_size: int = 28
    channels: Channels = 1
    mean: list[float] | None = None
    std: list[float] | None = None
    crop_pct: float = 0.875
    interpolation: Interpolation = "bicubic"
    background: int = 0
    class_names: list[str] | None = None
    num_train_samples: int | None = None
    num_eval_samples: int | None = None
    cache_samples: bool = False
    fast_decode: bool = False
    on_bad_sample: OnBadSample = "error"

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.input_size >= 1, f"input_size={self.input_size} must be >= 1")
        for name in ("mean", "std"):
            values = getattr(self, name)
            _check(
                values is None or len(values) == self.channels,
                f"{name}={values} has {len(values or [])} values but channels={self.channels}",
            )
        _check(self.std is None or min(self.std) > 0, f"std={self.std} must be positive")
        _check(0 < self.crop_pct <= 1, f"crop_pct={self.crop_pct} must lie in (0, 1]")
        _check(0 <= self.background <= 255, f"background={self.background} must lie in 0..255")
        _check(
            self.class_names is None or len(self.class_names) >= 1,
            "class_names=[] must name at least one class (or be null to read them from the data)",
        )
        for name in ("num_train_samples", "num_eval_samples"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{name}={value} must be >= 1 (or null for all)")
        imagefolder_only = [name for name in ("train_dir", "val_dir") if getattr(self, name) is not None]
        _check(
            self.format == "imagefolder" or not imagefolder_only,
            f"{', '.join(imagefolder_only)} only apply to format='imagefolder', not {self.format!r}; use root",
        )


@dataclass
class AugmentConfig:
    """Training augmentation: per sample (albumentations), per batch (timm Mixup/CutMix), in the loss.

    Args:
        scale: area fraction range of the random resized crop ((0.08, 1) on ImageNet; small
            images want a gentler range).
        ratio: aspect-ratio range of the crop.
        hflip: horizontal flip probability (0 for digits and text).
        color_ops: RandAugment-like photometric ops drawn per image (3-channel data only).
        color_magnitude: their strength, in (0, 1].
        mixup_alpha: Beta(alpha, alpha) of mixup; 0 turns it off (0.8 in DeiT/MAE).
        cutmix_alpha: Beta(alpha, alpha) of cutmix; 0 turns it off (1.0 in DeiT/MAE).
        mixup_prob: probability that a batch is mixed.
        mixup_switch_prob: with both on, the probability of cutmix rather than mixup.
        mixup_mode: ``"batch"``, ``"pair"`` or ``"elem"`` (timm's modes).
        label_smoothing: mass spread uniformly over the classes, in [0, 1).
        translate_px: per batch, on the device: shift each image by up to this many pixels in
            each direction (edge pixels repeat into the gap); 0 turns it off. It runs after
            the per-sample pipeline, so it works with `data.cache_samples`.
        erase_prob: per batch, on the device: the probability that an image gets one random
            rectangle (2-33% of its area) of per-pixel normal noise (timm's `RandomErasing`,
            mode "pixel", as DeiT's ``reprob``); 0 turns it off. Works with the cache too.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    color_ops: int = 2
    color_magnitude: float = 0.3
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: MixupMode = "batch"
    label_smoothing: float = 0.1
    translate_px: int = 0
    erase_prob: float = 0.0

    def __post_init__(self) -> None:
        check_choices(self)
        _check(0 < self.scale[0] <= self.scale[1] <= 1, f"scale={list(self.scale)} must satisfy 0 < low <= high <= 1")
        _check(0 < self.ratio[0] <= self.ratio[1], f"ratio={list(self.ratio)} must satisfy 0 < low <= high")
        for name in ("hflip", "mixup_prob", "mixup_switch_prob", "erase_prob"):
            value = getattr(self, name)
            _check(0 <= value <= 1, f"{name}={value} must lie in [0, 1]")
        _check(self.color_ops >= 0, f"color_ops={self.color_ops} must be >= 0")
        _check(0 < self.color_magnitude <= 1, f"color_magnitude={self.color_magnitude} must lie in (0, 1]")
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            _check(value >= 0, f"{name}={value} must be >= 0 (0 turns it off)")
        _check(0 <= self.label_smoothing < 1, f"label_smoothing={self.label_smoothing} must lie in [0, 1)")
        _check(self.translate_px >= 0, f"translate_px={self.translate_px} must be >= 0 (0 turns it off)")

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (mixup or cutmix on)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class ClassificationConfig:
    """Everything one classification run needs; saved as ``config.yaml`` beside its checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
