"""The classification config: one dataclass schema, loaded with `vit_training.config.load_config`.

    config = load_config(ClassificationConfig, "configs/classification/fashion_mnist_cpu.yaml",
                         ["train.epochs=3", "data.num_train_samples=2000"])

Sections: `model` (which ViT, head, regularisation, pretrained weights), `data` (format, where,
input size, channels, normalisation), `augment` (per-sample crop/flip/colour, per-batch
mixup/cutmix, label smoothing) and the generic `optim`, `schedule` and `train` of `vit_training`.

Fields left None are filled from elsewhere by `ClassificationTask` (e.g. `model.num_classes` from
the data's class list, `data.mean` from the data format), so a YAML file states only what it means.
Range checks live in `__post_init__`; their messages start with the field name, so a load error
reads ``configs/x.yaml: augment.hflip=1.5 must lie in [0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vit_backbone import preset_names
from vit_backbone.conv_stem import conv_stem_error
from vit_training import OptimizerConfig, ScheduleConfig, TrainConfig, check_choices

DataFormat = Literal["fashion_mnist", "mnist", "imagefolder", "cifar10", "cifar100"]
GlobalPool = Literal["token", "avg"]
AttnKernel = Literal["auto", "sdpa", "manual"]
WeightInit = Literal["timm", "jax", "jax_nlhb"]
PretrainedLayout = Literal["auto", "timm", "torchvision", "hf", "jax"]
Channels = Literal[1, 3]
Interpolation = Literal["bilinear", "bicubic"]
MixupMode = Literal["batch", "pair", "elem"]
CifarLabels = Literal["fine", "coarse"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_rate(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        _check(0 <= value < 1, f"{name}={value} must lie in [0, 1)")


@dataclass
class ModelConfig:
    """Which ViT to build and how to initialise it (`vit_classification.model.build_classifier`).

    Architecture fields left None take the preset's value, except `num_classes`, `in_chans` and
    `img_size`, which `ClassificationTask` takes from the data (class count, `data.channels`,
    `data.input_size`) so they cannot disagree with it.

    Args:
        preset: a `vit_backbone` preset name (`vit_backbone.preset_names()`), e.g.
            ``vit_micro_patch4_28`` or ``vit_base_patch16``.
        num_classes: classes of the linear head.
        in_chans: image channels the patch embedding takes (1 or 3).
        img_size: side the learned position embedding is stored for (other sizes are resampled).
        patch_size, embed_dim, depth, num_heads, mlp_ratio: override the preset's architecture.
            With `conv_stem`, None takes the stem's stride as the patch size.
        conv_stem: output channels of stride-2 3x3 convolutions (BatchNorm + ReLU) that replace the
            patchify convolution, then a 1x1 projection to the width (Xiao et al. 2021, "Early
            convolutions help transformers see better"; `vit_backbone.ConvStemEmbed`), e.g.
            [24, 48, 96]: stride 8, so a 32 x 32 input gives 4 x 4 tokens. None: plain patches.
        global_pool: ``"token"`` (class token, ViT/DeiT/augreg) or ``"avg"`` (mean of patch tokens, MAE).
        fc_norm: LayerNorm after pooling instead of before it (timm's layout for avg pooling; MAE's
            fine-tuning). Changes the parameter names (`norm` -> `fc_norm`).
        init_values: LayerScale initial gain (DeiT-3, CaiT); None disables LayerScale.
        drop_rate: dropout before the head.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last block (earlier blocks get linearly less).
        attn_kernel: ``"auto" | "sdpa" | "manual"`` attention implementation.
        weight_init: initialisation of a model trained from scratch (``"timm"``, ``"jax"``,
            ``"jax_nlhb"``); with `pretrained` everything but a reset head is overwritten.
        grad_checkpointing: recompute block activations in the backward pass (less memory).
        pretrained: a local checkpoint file (.safetensors, .pth/.pt/.bin/.ckpt, JAX .npz) of a
            timm, torchvision, Hugging Face or JAX ViT; None trains from scratch.
        pretrained_layout: the checkpoint's layout, or ``"auto"`` to detect it.
        pretrained_reset_head: None resets the head exactly when the checkpoint's head does not
            fit `num_classes` (or it has none); True / False force it.
        pretrained_strict: every model key must come from the checkpoint (except a reset head)
            and every checkpoint key must have a place; false for e.g. MAE checkpoints whose
            final `norm` becomes `fc_norm` in fine-tuning.
    """

    preset: str = "vit_micro_patch4_28"
    num_classes: int | None = None
    in_chans: int | None = None
    img_size: int | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    conv_stem: list[int] | None = None
    global_pool: GlobalPool = "token"
    fc_norm: bool = False
    init_values: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    attn_kernel: AttnKernel = "auto"
    weight_init: WeightInit = "timm"
    grad_checkpointing: bool = False
    pretrained: str | None = None
    pretrained_layout: PretrainedLayout = "auto"
    pretrained_reset_head: bool | None = None
    pretrained_strict: bool = True

    def __post_init__(self) -> None:
        check_choices(self)
        _check(
            self.preset in preset_names(),
            f"preset={self.preset!r} is not a vit_backbone preset; choose one of: {', '.join(preset_names())}",
        )
        for name in ("num_classes", "in_chans", "img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{name}={value} must be >= 1 (or null for the default)")
        if self.conv_stem is not None:
            problem = conv_stem_error(self.conv_stem, self.patch_size)
            _check(problem is None, str(problem))
        _check(self.in_chans in (None, 1, 3), f"in_chans={self.in_chans} must be 1 or 3 (or null)")
        _check(self.mlp_ratio is None or self.mlp_ratio > 0, f"mlp_ratio={self.mlp_ratio} must be > 0")
        _check(self.init_values is None or self.init_values > 0, f"init_values={self.init_values} must be > 0")
        _check_rate(self, "drop_rate", "attn_drop_rate", "drop_path_rate")


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
