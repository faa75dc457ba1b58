"""The segmentation config: one dataclass schema, loaded with `vit_training.config.load_config`.

    config = load_config(SegmentationConfig, "configs/segmentation/mri_lobes_cpu.yaml", ["train.epochs=3"])

Sections: `model` (`model.backbone`: which ViT encoder and its pretrained weights; the class
count and the TransUNet decoder), `data` (Synapse npz/h5 or NIfTI, class names, input size,
intensity normalisation of NIfTI volumes), `augment` (TransUNet's rot90/flip and rotation, plus
scaling), `loss` (cross-entropy + Dice weights), `eval` (metric conventions, slice batching,
overlays) and the generic `optim`, `schedule` and `train` of `vit_training`.

Fields left None are filled by `SegmentationTask` (`model.backbone.img_size` from `data.input_size`,
`data.class_names` from the data's ``classes.txt``), so a YAML file states only what it means.
Range checks live in `__post_init__`; their messages start with the field name, so a load error
reads ``configs/x.yaml: model.n_skip=4 must lie in [0, 3] ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vit_backbone import BackboneConfig
from vit_training import OptimizerConfig, ScheduleConfig, TrainConfig, check_choices

from .inference import InferenceMode, ResizeBack, flip_combinations, largest_component_classes

DataFormat = Literal["synapse", "nifti"]
Modality = Literal["ct", "mr"]
Normalization = Literal["ct", "mr", "zscore"]
Interpolation = Literal["bilinear", "bicubic"]
MetricMode = Literal["transunet", "standard"]
FlipAxis = Literal["random", "height", "width"]
OnBadSample = Literal["error", "skip"]
# Orientation codes: each letter names one anatomical axis (the same check as data.check_orientation).
_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class ModelConfig:
    """The TransUNet to build (`vit_segmentation.model.build_transunet`).

    Args:
        backbone: the ViT encoder and its pretrained weights (`vit_backbone.BackboneConfig`):
            preset ``vit_base_r50_s16`` is TransUNet's R50-ViT-B/16, a plain ViT
            (``vit_base_patch16``) the paper's ViT-CUP; `hybrid_layers` overrides the CNN's stages
            (e.g. [1, 1] for a small stride-8 hybrid: skips at strides 2 and 4). `img_size` null
            takes `data.input_size` (pretrained embeddings are resampled to it at load time).
            `in_chans`: 3 repeats the 1-channel slices to 3 (TransUNet, and what RGB-pretrained
            weights need), 1 builds the first convolution for one channel; null takes 3, or C
            with C > 1 `data.channels` (then it must be C). The pretrained checkpoint's
            classifier is dropped; the decoder always starts from scratch.
        num_classes: segmentation classes, label values 0..num_classes-1, background (0)
            included (Synapse: 9); null takes the count of ``labels`` in ``data.root/dataset.json``.
        n_skip: decoder stages that concatenate a CNN skip map, from the deepest: 3 = TransUNet,
            0 = R50-ViT-CUP; a plain ViT has no skip maps and needs 0.
        decoder_channels: output channels of the upsampler stages; one stage per factor 2 of the
            patch size (4 for patch 16, 3 for patch 8).
        head_channels: channels of the 3x3 convolution on the token map (TransUNet: 512).
    """

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(preset="vit_base_r50_s16", in_chans=3))
    num_classes: int | None = 9
    n_skip: int = 3
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 16])
    head_channels: int = 512

    def __post_init__(self) -> None:
        _check(self.num_classes is None or self.num_classes >= 2,
               f"num_classes={self.num_classes} must be >= 2 (background + classes), or null (from dataset.json)")
        _check(
            len(self.decoder_channels) >= 1 and min(self.decoder_channels) >= 1,
            f"decoder_channels={self.decoder_channels} must be >= 1 positive channel counts",
        )
        _check(
            0 <= self.n_skip < len(self.decoder_channels),
            f"n_skip={self.n_skip} must lie in [0, {len(self.decoder_channels) - 1}] (the last decoder stage "
            "works at the input resolution, where no skip map exists)",
        )
        _check(self.head_channels >= 1, f"head_channels={self.head_channels} must be >= 1")
        _check(self.backbone.in_chans is None or self.backbone.in_chans >= 1,
               f"backbone.in_chans={self.backbone.in_chans} must be >= 1 (1 or 3 for one channel, C for "
               "C data.channels) or null")
        _check(
            self.backbone.pretrained is None or self.backbone.in_chans != 1,
            "backbone.in_chans=1 with backbone.pretrained: ImageNet checkpoints take RGB; keep in_chans=3 "
            "(1-channel slices are repeated to 3 channels, as TransUNet does)",
        )


@dataclass
class DataConfig:
    """Where the slices and volumes come from and how they become model inputs.

    Args:
        format: ``"synapse"`` (TransUNet's files: ``train_npz/caseXXXX_sliceNNN.npz`` slices and
            ``test_vol_h5/caseXXXX.npy.h5`` volumes (Z, H, W), listed in ``train.txt`` /
            ``test_vol.txt``) or ``"nifti"`` (the MSD / nnU-Net layout: ``root/imagesTr/`` +
            ``root/labelsTr/``, optional ``root/dataset.json``; see `vit_segmentation.data`).
        root: the data folder.
        list_dir: Synapse only: the folder of the list files; None means ``root/lists``.
        train_list, test_list: Synapse only: list file names (slice names / case names).
        eval_root: NIfTI only: a second folder (``imagesTr/`` + ``labelsTr/``) to evaluate on.
        eval_cases: NIfTI only: case names of `root` held out of training for evaluation.
            Without `eval_root`, `eval_cases` and `val_fraction` training runs without evaluation.
        val_fraction: NIfTI only: when neither `eval_cases` nor `eval_root` is set, hold out this
            fraction of the cases of `root` for evaluation (whole cases, drawn with `train.seed`,
            at least one on each side). The drawn cases fill `eval_cases` in the run's saved
            config (so `evaluate` keeps them when the folder grows) and training lists both sides
            in ``split.json`` in the run folder. 0 holds out nothing.
        class_names: names of the foreground classes 1..model.num_classes-1 (metric columns); None reads
            the ``labels`` of ``root/dataset.json`` or ``root/classes.txt`` (one name a line) when
            present, else "class_1", "class_2", ...
        input_size: (height, width) the slices are resized to for the model (training and
            inference); sides must be divisible by the patch size. Non-square is fine.
        interpolation: image resize interpolation (labels are always resized nearest).
        modality: NIfTI only: ``"ct"`` (clip to `ct_window` in HU, scale to [0, 1]) or ``"mr"``
            (clip to the `mr_percentiles` of the volume, scale to [0, 1]); the normalisation of
            every channel unless `normalization` says otherwise.
        axis: NIfTI only: the axis to slice along, of the array after `orientation`: with RAS
            (or LPS) 0 = sagittal (x), 1 = coronal (y), 2 = axial (z); with ``orientation: none``
            the stored array's axis.
        orientation: NIfTI only: the axis codes every volume is reoriented to on load (nibabel:
            axes permuted and flipped, no interpolation; an oblique affine goes to its closest
            axes), e.g. ``RAS`` (axes run towards Right, Anterior, Superior) or ``LPS``; ``none``
            keeps each file's stored voxel order. Predictions are written back in each input's
            own orientation, grid and header.
        target_spacing: NIfTI only: resample every volume to this voxel size in mm, along the
            reoriented axes 0, 1, 2 (for RAS and axis 2: [in-plane x, in-plane y, through-plane
            z]); one number for isotropic. Images linear, labels nearest; predictions go back to
            each input's grid and metrics are computed there, at its own spacing. null keeps
            every volume's native grid.
        channels: NIfTI only: the input channel (modality) names in file order, ``<case>_0000``,
            ``<case>_0001``, ... (or the 4th dimension of one MSD file); null reads
            ``channel_names`` / ``modality`` of ``root/dataset.json``, else one channel.
            `model.backbone.in_chans` follows their count.
        context_slices: 2.5D input: k neighbouring slices on each side of a slice join it as extra
            input channels (channel-major: each channel's slices z-k .. z+k), so the 2D model
            sees the through-plane shape. Slices beyond the volume's ends repeat its first / last
            slice; a Synapse training slice's neighbours are the files ``<case>_slice<NNN±d>.npz``
            of ``train_npz/`` (a missing one is replaced by the nearest slice towards the centre).
            `model.backbone.in_chans` follows: channels x (2k + 1). 0 (default) = plain 2D slices.
        normalization: NIfTI only: the intensity normalisation of each channel, in order:
            ``ct`` (`ct_window`), ``mr`` (`mr_percentiles`) or ``zscore`` (mean / std of the
            nonzero voxels); one entry applies to all; null uses `modality` for every channel.
        ct_window: NIfTI CT: (low, high) HU window (TransUNet: [-125, 275]).
        mr_percentiles: NIfTI MR: (low, high) intensity percentiles.
        skip_empty_slices: NIfTI only: train on slices with some foreground only.
        on_bad_sample: a training slice file (Synapse) or case (NIfTI) that is missing or
            unreadable: ``"error"`` stops before the first step naming the file; ``"skip"``
            leaves it out with a warning and lists it in ``skipped_samples.txt`` of the run
            folder. Evaluation cases are always read in full up front and never skipped.
    """

    format: DataFormat = "synapse"
    root: str | None = None
    list_dir: str | None = None
    train_list: str = "train.txt"
    test_list: str = "test_vol.txt"
    eval_root: str | None = None
    eval_cases: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    class_names: list[str] | None = None
    input_size: tuple[int, int] = (224, 224)
    interpolation: Interpolation = "bicubic"
    modality: Modality = "ct"
    axis: int = 2
    orientation: str = "RAS"
    target_spacing: list[float] | None = None
    channels: list[str] | None = None
    normalization: list[Normalization] | None = None
    context_slices: int = 0
    ct_window: tuple[float, float] = (-125.0, 275.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    skip_empty_slices: bool = False
    on_bad_sample: OnBadSample = "error"

    @property
    def slices_per_channel(self) -> int:
        """Input channels each modality becomes: its slice and `context_slices` neighbours on each side (2k + 1)."""
        return 2 * self.context_slices + 1

    @property
    def input_channels(self) -> int:
        """The model's input channels: the modalities (one without `channels`) x `slices_per_channel`."""
        return (len(self.channels) if self.channels else 1) * self.slices_per_channel

    def __post_init__(self) -> None:
        check_choices(self)
        _check(
            len(self.input_size) == 2 and min(self.input_size) >= 1,
            f"input_size={list(self.input_size)} must be [height, width] in pixels",
        )
        _check(self.axis in (0, 1, 2), f"axis={self.axis} must be 0, 1 or 2")
        _check(self.context_slices >= 0,
               f"context_slices={self.context_slices} must be >= 0 (neighbouring slices on each side; 0 = 2D)")
        code = str(self.orientation).upper()
        _check(
            code == "NONE" or (len(code) == 3 and all(c in _AXIS_OF_LETTER for c in code)
                               and len({_AXIS_OF_LETTER[c] for c in code}) == 3),
            f"orientation={self.orientation!r} must be three letters naming each axis once (one of L/R, P/A, "
            "I/S, e.g. RAS or LPS) or 'none'",
        )
        _check(
            self.target_spacing is None or (len(self.target_spacing) in (1, 3) and min(self.target_spacing) > 0),
            f"target_spacing={self.target_spacing} must be one or three positive numbers in mm (or null)",
        )
        _check(self.channels is None or len(self.channels) >= 1, "channels=[] must name at least one channel (or null)")
        if self.normalization is not None:
            count = len(self.channels) if self.channels else None
            _check(
                len(self.normalization) == 1 or count is None or len(self.normalization) == count,
                f"normalization={list(self.normalization)} must have one entry, or one per channel "
                f"({count}: {list(self.channels or [])})",
            )
        _check(self.ct_window[0] < self.ct_window[1], f"ct_window={list(self.ct_window)} must be [low, high]")
        _check(
            0 <= self.mr_percentiles[0] < self.mr_percentiles[1] <= 100,
            f"mr_percentiles={list(self.mr_percentiles)} must satisfy 0 <= low < high <= 100",
        )
        _check(0 <= self.val_fraction < 1,
               f"val_fraction={self.val_fraction} must lie in [0, 1) (the fraction of cases held out for evaluation)")
        nifti_only = [name for name in ("eval_root", "eval_cases", "val_fraction") if getattr(self, name)]
        _check(
            self.format == "nifti" or not nifti_only,
            f"{', '.join(nifti_only)} only apply to format='nifti'; Synapse evaluates the cases of test_list",
        )


@dataclass
class AugmentConfig:
    """Training augmentation of the slice and its labels together (albumentations).

    TransUNet's recipe is `rot_flip_prob` 0.5 with `rot90` on and `rotate_prob` 0.5 at ±20°.

    Args:
        rot_flip_prob: probability of a random rot90 (if `rot90`) followed by a flip.
        rot90: include the rot90 in that step; turn it off for non-square slices, whose rotated
            copy would be squeezed into the input size.
        flip_axis: the flip of that step: ``"random"`` (either axis, TransUNet), ``"height"`` (rows
            reversed) or ``"width"`` (columns reversed); one axis for data whose classes depend on
            the position along the other (e.g. brain lobes from front to back).
        rotate_prob: probability of the small rotation / scaling.
        rotate_limit: rotation range ±degrees.
        scale: zoom range of that same affine step ([1, 1] = none).
        elastic_prob: probability of an elastic deformation of the slice and its labels (0 = off).
        elastic_alpha: its displacement scale, px per unit of the smoothed N(0, 1) noise.
        elastic_sigma: the Gaussian smoothing of the displacements, px (larger = smoother).
        gamma_prob: probability of a gamma curve on the intensities (nnU-Net's: 0.3); 0 = off.
            Each modality's range is kept; its 2.5D neighbours share the draw.
        gamma_range: (low, high) of the uniform gamma draw (nnU-Net's: [0.7, 1.5]).
    """

    rot_flip_prob: float = 0.5
    rot90: bool = True
    flip_axis: FlipAxis = "random"
    rotate_prob: float = 0.5
    rotate_limit: float = 20.0
    scale: tuple[float, float] = (1.0, 1.0)
    elastic_prob: float = 0.0
    elastic_alpha: float = 50.0
    elastic_sigma: float = 5.0
    gamma_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.elastic_alpha > 0 and self.elastic_sigma > 0,
               f"elastic_alpha={self.elastic_alpha} and elastic_sigma={self.elastic_sigma} must be > 0")
        _check(len(self.gamma_range) == 2 and 0 < self.gamma_range[0] <= self.gamma_range[1],
               f"gamma_range={list(self.gamma_range)} must be [low, high] with 0 < low <= high")
        for name in ("rot_flip_prob", "rotate_prob", "elastic_prob", "gamma_prob"):
            value = getattr(self, name)
            _check(0 <= value <= 1, f"{name}={value} must lie in [0, 1]")
        _check(0 <= self.rotate_limit <= 180, f"rotate_limit={self.rotate_limit} must lie in [0, 180]")
        _check(0 < self.scale[0] <= self.scale[1], f"scale={list(self.scale)} must satisfy 0 < low <= high")


@dataclass
class LossConfig:
    """Training loss: ``ce_weight * cross-entropy + dice_weight * soft Dice`` (TransUNet: 0.5 / 0.5).

    Args:
        ce_weight: weight of the pixel-wise cross-entropy.
        dice_weight: weight of the soft Dice loss (background included, mean over classes).
    """

    ce_weight: float = 0.5
    dice_weight: float = 0.5

    def __post_init__(self) -> None:
        _check(self.ce_weight >= 0, f"ce_weight={self.ce_weight} must be >= 0")
        _check(self.dice_weight >= 0, f"dice_weight={self.dice_weight} must be >= 0")
        _check(self.ce_weight + self.dice_weight > 0, "ce_weight and dice_weight are both 0: nothing to train")


@dataclass
class EvalConfig:
    """Volume evaluation (`SegmentationTask.evaluate`).

    Args:
        metric_mode: the reported `mean_dice` / `mean_hd95` convention: ``"transunet"`` (3D Dice and
            HD95 in voxels with TransUNet's empty-mask rules, comparable to its paper) or
            ``"standard"`` (HD95 in mm at the volume's spacing, NaN/inf for empty masks).
        other_mode: also compute the other convention, logged as ``standard/...`` or
            ``transunet/...`` (costs a second distance transform per class).
        slice_batch_size: slices per forward pass when predicting a volume (with sliding windows:
            slices whose windows are blended together).
        overlay_slices: slices drawn by `visualize` (PNG overlays of image, truth and prediction).
        inference: how a slice is predicted (`vit_segmentation.inference`): ``"resize"`` to
            `data.input_size` and the labels back (TransUNet), or ``"sliding_window"``: windows of
            `data.input_size` at the slice's own resolution, blended with a Gaussian weight.
        resize_back: how ``resize`` returns to the slice's size: ``"labels"`` (the argmax at
            `data.input_size`, resized back with nearest neighbours, as TransUNet) or
            ``"probabilities"`` (the softmax resized back bilinearly and the argmax taken at the
            slice's own resolution, as nnU-Net and MONAI resample predictions: smoother boundaries
            at no training cost).
        window_overlap: fraction of a window shared with its neighbour along each axis, in [0, 1)
            (``sliding_window`` only; 0.5 as MONAI's and nnU-Net's usual choice).
        window_batch_size: windows per forward pass (``sliding_window`` only).
        tta_flips: test-time flips whose softmax is averaged with the unflipped pass: false (none),
            true (height, width and both), or a list such as ``[height, [height, width]]``.
        largest_component: post-processing of each predicted volume (nnU-Net's): the listed classes
            keep only their largest 3D connected component, the rest of their voxels become
            background. false (none), true (every foreground class) or a list of class values.
            For structures known to be one piece each.
        save_predictions: NIfTI cases: also write each evaluated case's labels as
            ``predictions/<case>.nii.gz`` in the evaluation folder (nnU-Net's naming), on the
            case's own grid, orientation, affine and header.
    """

    metric_mode: MetricMode = "transunet"
    other_mode: bool = True
    slice_batch_size: int = 16
    overlay_slices: int = 4
    inference: InferenceMode = "resize"
    resize_back: ResizeBack = "labels"
    window_overlap: float = 0.5
    window_batch_size: int = 32
    tta_flips: Any = False
    largest_component: Any = False
    save_predictions: bool = False

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.slice_batch_size >= 1, f"slice_batch_size={self.slice_batch_size} must be >= 1")
        _check(self.overlay_slices >= 0, f"overlay_slices={self.overlay_slices} must be >= 0")
        _check(0.0 <= self.window_overlap < 1.0, f"window_overlap={self.window_overlap} must lie in [0, 1)")
        _check(self.window_batch_size >= 1, f"window_batch_size={self.window_batch_size} must be >= 1")
        flip_combinations(self.tta_flips)  # raises a one-line ValueError naming the bad entry
        if self.largest_component is not True:  # true needs the class count; lists are range-checked with it too
            largest_component_classes(self.largest_component)

    def inference_options(self) -> dict[str, Any]:
        """The keyword arguments of `task.predict_volume` that choose how slices are predicted."""
        return {
            "inference": self.inference,
            "resize_back": self.resize_back,
            "window_overlap": self.window_overlap,
            "window_batch_size": self.window_batch_size,
            "tta_flips": self.tta_flips,
            "largest_component": self.largest_component,
        }


@dataclass
class SegmentationConfig:
    """Everything one segmentation run needs; saved as ``config.yaml`` beside its checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # Known only with both sections: the class names must fit the class count, the patch the input size.
        names, num_classes = self.data.class_names, self.model.num_classes
        if names is not None and num_classes is not None:  # null: from dataset.json, checked when resolved
            _check(
                len(names) == num_classes - 1,
                f"data.class_names has {len(names)} names but model.num_classes={num_classes} needs "
                f"{num_classes - 1} (the foreground classes 1..{num_classes - 1}, without background)",
            )
        if num_classes is not None:
            largest_component_classes(self.eval.largest_component, num_classes)  # classes 1..num_classes-1
        patch = self.model.backbone.resolved_patch_size
        height, width = self.data.input_size
        _check(
            height % patch == 0 and width % patch == 0,
            f"data.input_size={[height, width]} is not divisible by the model's patch size {patch}",
        )
