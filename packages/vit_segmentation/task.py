"""The segmentation Task that `vit_training.loop.fit` runs, and volume / image prediction.

Training batches are ``(images, labels)``: images float32 (B, 1, h, w) normalised slices at
`data.input_size` (h, w), labels int64 (B, h, w) in [0, C). Per-slice augmentation is seeded from
(train.seed, epoch, index), so a resumed run and any process or worker see the same samples.

Evaluation batches are lists of `data.Volume` (images (S, H, W) at their own size), one per
process step (`eval_batch_size = 1`, so cases spread over the processes). Each volume is
predicted as TransUNet does (`predict_volume`): every slice resized to the training size, one
forward pass per batch of slices, argmax, the prediction resized back (nearest) to the slice
size, the slices stacked; then per-class 3D Dice and HD95 (`metrics.case_metrics`). The per-case
rows are gathered across processes, de-duplicated by case (Accelerate pads the last round with
repeats) and summarised identically on every process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from vit_training.config import ConfigError
from vit_training.data import find_bad_files, handle_bad_samples
from vit_training.task import Task

from .config import SegmentationConfig
from .data import (
    DATASET_JSON,
    AugmentedSlices,
    DatasetJson,
    NiftiSliceDataset,
    NiftiVolumeDataset,
    SynapseSliceDataset,
    SynapseVolumeDataset,
    Volume,
    check_nifti_header,
    check_slice_header,
    find_nifti_cases,
    read_dataset_json,
    stack_context_slices,
    write_nifti_labels,
)
from .inference import (
    INFERENCE_MODES,
    RESIZE_BACK_MODES,
    InferenceMode,
    ResizeBack,
    flip_combinations,
    keep_largest_component,
    largest_component_classes,
    predict_with_flips,
    sliding_window_predict,
)
from .losses import CeDiceLoss
from .metrics import METRIC_MODES, case_metrics, format_table, summarize, write_case_csv
from .model import TransUNet, build_transunet
from .transforms import (
    Interpolation,
    SliceTransform,
    build_eval_transform,
    build_train_transform,
    resize_image,
    resize_labels,
)
from .visualize import overlay_slice_indices, save_overlays

logger = logging.getLogger(__name__)

__all__ = ["SegmentationTask", "default_class_names", "nifti_read_options", "predict_volume", "resolve_config",
           "split_cases"]

CLASSES_FILE = "classes.txt"  # one foreground class name a line, written by `prepare` and by users
OVERLAY_FILE = "overlays.png"
SUMMARY_FILE = "summary.txt"
SPLIT_FILE = "split.json"  # the NIfTI training / evaluation cases of a run, written by training
PREDICTIONS_DIR = "predictions"  # eval.save_predictions: <case>.nii.gz in the evaluation folder


# ------------------------------------------------------------------------------------------ config
def default_class_names(num_classes: int) -> list[str]:
    """"class_1" .. "class_{C-1}": the foreground names when neither the config nor the data give any."""
    return [f"class_{index}" for index in range(1, num_classes)]


def _read_class_file(path: Path, num_classes: int) -> list[str]:
    """Foreground names from a ``classes.txt``: C-1 lines, or C lines whose first names the background."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) == num_classes:
        names = names[1:]
    if len(names) != num_classes - 1:
        raise ValueError(
            f"{path}: {len(names)} class names, but model.num_classes={num_classes} needs {num_classes - 1} "
            "(one per foreground class, background optional as the first line)"
        )
    return names


def _dataset_json(config: SegmentationConfig) -> DatasetJson | None:
    """``data.root/dataset.json`` of a NIfTI data set, parsed, or None when there is none."""
    data = config.data
    if data.format != "nifti" or data.root is None or not (Path(data.root) / DATASET_JSON).is_file():
        return None
    return read_dataset_json(Path(data.root) / DATASET_JSON)


def _apply_dataset_json(config: SegmentationConfig) -> SegmentationConfig:
    """`config` with what ``dataset.json`` says filled in (class count and names, channels) and
    `model.backbone.in_chans` following the channel count; a config that contradicts it is an error."""
    data, model = config.data, config.model
    info = _dataset_json(config)
    if info is not None:
        where = f"data.root={data.root!r}: {info.path.name}"
        if model.num_classes is not None and model.num_classes != info.num_classes:
            raise ConfigError(f"model.num_classes={model.num_classes}, but {where} names {info.num_classes} labels "
                              f"({', '.join(info.class_names)}); set model.num_classes={info.num_classes} or null")
        if data.channels is not None and len(data.channels) != len(info.channels):
            raise ConfigError(f"data.channels={list(data.channels)}, but {where} names {len(info.channels)} "
                              f"channels ({', '.join(info.channels)}); set data.channels=null to take them")
        model = dataclasses.replace(model, num_classes=info.num_classes)
        data = dataclasses.replace(
            data, class_names=list(data.class_names) if data.class_names is not None else info.class_names[1:],
            channels=list(data.channels) if data.channels is not None else list(info.channels))
    if model.num_classes is None:
        raise ConfigError("model.num_classes is null but there is no dataset.json to take it from "
                          f"(data.root={data.root!r}); set model.num_classes to the class count, background included")
    count = len(data.channels) if data.channels else 1
    if data.normalization is not None and len(data.normalization) not in (1, count):
        raise ConfigError(f"data.normalization={list(data.normalization)} must have one entry or one per channel "
                          f"({count}: {list(data.channels or [])})")
    inputs = data.input_channels  # each channel's 2k + 1 slices
    if inputs > 1:
        in_chans = model.backbone.in_chans
        if in_chans is None:
            model = dataclasses.replace(model, backbone=dataclasses.replace(model.backbone, in_chans=inputs))
        elif in_chans != inputs:
            what = (f"data.channels names {count} channels ({', '.join(data.channels or [])})" if count > 1 else
                    "the slices have 1 channel")
            if data.context_slices:
                what += f" and data.context_slices={data.context_slices} adds {2 * data.context_slices} slices to each"
            raise ConfigError(f"model.backbone.in_chans={in_chans}, but {what}; set in_chans={inputs} or null")
    return dataclasses.replace(config, data=data, model=model)


def nifti_read_options(config: SegmentationConfig) -> dict[str, Any]:
    """The `data.read_nifti_volume` keyword arguments of a (resolved) config, all but the case's files."""
    data = config.data
    channels = len(data.channels) if data.channels else 1
    return {"modality": data.modality, "axis": data.axis, "ct_window": tuple(data.ct_window),
            "mr_percentiles": tuple(data.mr_percentiles), "orientation": data.orientation,
            "target_spacing": list(data.target_spacing) if data.target_spacing is not None else None,
            "normalization": list(data.normalization) if data.normalization is not None else None,
            "channels": channels}


def _case_files(config: SegmentationConfig) -> dict[str, Any]:
    """`find_nifti_cases`' channel count and file ending for a (resolved) config."""
    info = _dataset_json(config)
    return {"channels": len(config.data.channels) if config.data.channels else 1,
            "file_ending": info.file_ending if info is not None else None}


def resolve_config(config: SegmentationConfig) -> SegmentationConfig:
    """A copy of `config` with what it leaves to the data filled in.

    From ``data.root/dataset.json`` of a NIfTI set (`data.read_dataset_json`), when present:
    `model.num_classes`, `data.class_names`, `data.channels`; `model.backbone.in_chans` follows
    the channel count. Then `data.class_names` (from ``data.root/classes.txt`` when present, else
    "class_1", ...), `model.backbone.img_size` (`data.input_size`) and, for a NIfTI folder split by
    `data.val_fraction`, `data.eval_cases` (the drawn cases, `split_cases`). Saved as the run's
    config.yaml, the result rebuilds the same model, names its classes without the data (for
    `predict`) and evaluates the same cases even after cases are added to the folder.

    Raises:
        ValueError: ``classes.txt`` does not have num_classes - 1 (or num_classes) names; fewer
            than two cases to split; a malformed ``dataset.json`` (naming the file and field).
        ConfigError: the config contradicts ``dataset.json``.
    """
    config = _apply_dataset_json(config)
    config = _draw_eval_cases(config)
    data, model = config.data, config.model
    names = list(data.class_names) if data.class_names is not None else None
    if names is None:
        path = Path(data.root) / CLASSES_FILE if data.root is not None else None
        names = (_read_class_file(path, model.num_classes) if path is not None and path.is_file()
                 else default_class_names(model.num_classes))
    data = dataclasses.replace(data, class_names=names)
    if model.backbone.img_size is None:
        model = dataclasses.replace(model, backbone=dataclasses.replace(model.backbone, img_size=list(data.input_size)))
    return dataclasses.replace(config, data=data, model=model)


def _draw_eval_cases(config: SegmentationConfig) -> SegmentationConfig:
    """`config` with `data.eval_cases` drawn by `data.val_fraction` from the NIfTI folder, when that
    applies (no explicit `eval_cases` / `eval_root`, the images folder present); else as it is."""
    data = config.data
    if (data.format != "nifti" or data.val_fraction <= 0 or data.eval_cases or data.eval_root is not None
            or data.root is None or not (Path(data.root) / "imagesTr").is_dir()):
        return config
    cases = [case for case, _, _ in find_nifti_cases(data.root, **_case_files(config))]
    try:
        _, held_out = split_cases(cases, data.val_fraction, config.train.seed)
    except ValueError as error:
        raise ValueError(f"data.root={data.root!r}: {error}") from None
    return dataclasses.replace(config, data=dataclasses.replace(data, eval_cases=held_out))


# ------------------------------------------------------------------------------------------ data
def _first_file(images: Path | tuple[Path, ...]) -> str:
    """The file that names a case in messages: its image, or its first channel file."""
    return str(images if isinstance(images, Path) else images[0])


def _volume_list(volumes: list[Volume]) -> list[Volume]:
    """Evaluation collation: the volumes as they are (they differ in size; no stacking)."""
    return list(volumes)


def split_cases(cases: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training cases, evaluation cases) of `cases`: a seeded draw of whole cases.

    ``round(val_fraction * len(cases))`` cases, clamped to [1, len(cases) - 1], are held out. The
    draw depends only on the sorted case names and `seed` (not on the listing order); a run keeps
    its drawn cases in its saved config (`resolve_config`). Both lists come back sorted.

    Raises:
        ValueError: fewer than two cases (nothing would be left on one side).
    """
    names = sorted(cases)
    if len(names) < 2:
        raise ValueError(f"data.val_fraction={val_fraction} needs at least 2 cases to split; found {len(names)}")
    count = min(max(round(val_fraction * len(names)), 1), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    held_out = {names[i] for i in order[:count]}
    return [n for n in names if n not in held_out], [n for n in names if n in held_out]


# ------------------------------------------------------------------------------------------ inference
def _label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    input_size: Sequence[int],
    interpolation: Interpolation = "bicubic",
    batch_size: int = 16,
    *,
    inference: InferenceMode = "resize",
    resize_back: ResizeBack = "labels",
    window_overlap: float = 0.5,
    window_batch_size: int = 32,
    tta_flips: Any = False,
    largest_component: Any = False,
    context_slices: int = 0,
) -> np.ndarray:
    """Segment a volume slice by slice, resized as TransUNet's `test_single_volume` or with sliding windows.

    ``inference="resize"``: each slice is resized to `input_size` (the training size), a batch of
    slices goes through the model, and either the argmax over classes is resized back to the slice
    size with nearest neighbours (``resize_back="labels"``, TransUNet) or the softmax is resized
    back bilinearly (pixel centres, as the image was resized) and the argmax taken at the slice size
    (``"probabilities"``, nnU-Net's and MONAI's way). ``"sliding_window"``: windows of `input_size` at the slice's own
    resolution, their softmax blended with a Gaussian weight (`inference.sliding_window_predict`),
    argmax at full resolution. `tta_flips` averages the softmax over flipped slices in either mode.
    The model runs on the device of its parameters, in whatever autocast context the caller set.

    Args:
        model: a segmentation model, images (B, C_in, h, w) -> logits (B, C, h, w).
        image: float normalised volume (S, H, W) (S = slicing axis), one (H, W) slice, or a
            multi-channel volume (S, C_in, H, W).
        input_size: (h, w) the model was trained at (the window of ``"sliding_window"``).
        interpolation: image resize of ``"resize"``, "bicubic" or "bilinear".
        batch_size: slices per forward pass (per blended group of windows for sliding windows).
        inference: ``"resize"`` or ``"sliding_window"`` (`EvalConfig.inference`).
        resize_back: ``"labels"`` or ``"probabilities"`` (`EvalConfig.resize_back`; ``resize`` only).
        window_overlap: fraction of a window shared with its neighbour, in [0, 1).
        window_batch_size: windows per forward pass.
        tta_flips: test-time flips (`EvalConfig.tta_flips`: false, true or a list of axis names).
        largest_component: classes reduced to their largest connected component over the whole
            volume (`EvalConfig.largest_component`: false, true or a list of class values).
        context_slices: k neighbouring slices on each side stacked as input channels
            (`DataConfig.context_slices`, `data.stack_context_slices`); the model takes C_in x (2k + 1).

    Returns:
        labels (S, H, W) (or (H, W) for a 2D input), uint8 (uint16 above 256 classes).
    """
    if inference not in INFERENCE_MODES:
        raise ValueError(f"inference={inference!r} is not one of {', '.join(INFERENCE_MODES)}")
    if resize_back not in RESIZE_BACK_MODES:
        raise ValueError(f"resize_back={resize_back!r} is not one of {', '.join(RESIZE_BACK_MODES)}")
    flips = flip_combinations(tta_flips)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (2, 3, 4):
        raise ValueError(
            f"expected a volume (S, H, W), a slice (H, W) or a multi-channel volume (S, C, H, W), got shape {image.shape}"
        )
    volume = image[None] if image.ndim == 2 else image
    volume = volume[:, None] if volume.ndim == 3 else volume  # (S, C_in, H, W)
    if volume.shape[0] == 0:
        raise ValueError(f"the volume has no slices (shape {image.shape})")
    net = extract_model_from_parallel(model, keep_torch_compile=False)
    was_training = net.training
    net.eval()
    device = next(net.parameters(), torch.empty(0)).device  # a model without parameters runs on the CPU
    num_slices, _, height, width = volume.shape

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        return net(images).float().softmax(dim=1)

    output: np.ndarray | None = None
    for start in range(0, num_slices, batch_size):
        stop = min(start + batch_size, num_slices)
        # The batch's model inputs (B, C_in * (2k + 1), H, W): stacked per batch, not for the whole volume.
        inputs = stack_context_slices(volume, context_slices, at=range(start, stop))
        if inference == "resize":
            chunk = np.stack([
                np.stack([resize_image(channel, input_size, interpolation) for channel in slice_inputs])
                for slice_inputs in inputs
            ])
            images = torch.from_numpy(chunk).to(device)
            if resize_back == "probabilities":
                scores = predict_with_flips(probabilities, images, flips)  # (B, C, h, w) softmax
                # Bilinear with pixel centres (align_corners=False): OpenCV's geometry of resize_image.
                scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
            else:
                # Without flips: argmax of the logits = argmax of the softmax TransUNet takes first.
                scores = net(images) if flips == [()] else predict_with_flips(probabilities, images, flips)
        else:
            images = torch.from_numpy(np.ascontiguousarray(inputs)).to(device)

            def windows(batch: torch.Tensor) -> torch.Tensor:
                return sliding_window_predict(probabilities, batch, input_size, window_overlap, window_batch_size)

            scores = predict_with_flips(windows, images, flips)
        if output is None:
            output = np.zeros((num_slices, height, width), dtype=_label_dtype(scores.shape[1]))
        predicted = scores.float().argmax(dim=1).cpu().numpy()
        for offset, index in enumerate(range(start, stop)):
            output[index] = resize_labels(predicted[offset], (height, width))
    net.train(was_training)
    assert output is not None  # the loop ran at least once: num_slices >= 1
    output = keep_largest_component(output, largest_component_classes(largest_component, scores.shape[1]))
    return output[0] if image.ndim == 2 else output


# ------------------------------------------------------------------------------------------ task
class SegmentationTask(Task):
    """TransUNet-style 2D slice segmentation evaluated on 3D volumes, as a `vit_training.task.Task`.

    Args:
        config: the run's config; it is resolved at construction (`resolve_config`: class names,
            model input size) and the result is `self.config`, the config to pass to `fit` and save.

    Attributes:
        config: the resolved config.
        class_names: the C-1 foreground class names.
        eval_batch_size: volumes per evaluation step and process (1: cases spread over processes).
    """

    eval_batch_size: int = 1
    _prediction_dir: Path | None = None  # set by `evaluate` under eval.save_predictions

    def __init__(self, config: SegmentationConfig) -> None:
        self.config = resolve_config(config)
        # Whether data.eval_cases was drawn here by data.val_fraction (split.json says so).
        self.drawn_split = bool(self.config.data.eval_cases) and not config.data.eval_cases
        self.criterion = CeDiceLoss(self.num_classes, self.config.loss.ce_weight, self.config.loss.dice_weight)

    @property
    def num_classes(self) -> int:
        return int(self.config.model.num_classes)

    @property
    def class_names(self) -> list[str]:
        """Foreground class names, index k = class k + 1."""
        return list(self.config.data.class_names)

    # -------------------------------------------------------------------------------- data
    def train_transform(self) -> SliceTransform:
        data, augment = self.config.data, self.config.augment
        return build_train_transform(
            data.input_size, rot_flip_prob=augment.rot_flip_prob, rot90=augment.rot90,
            flip_axis=augment.flip_axis, rotate_prob=augment.rotate_prob, rotate_limit=augment.rotate_limit,
            scale=tuple(augment.scale), interpolation=data.interpolation, elastic_prob=augment.elastic_prob,
            elastic_alpha=augment.elastic_alpha, elastic_sigma=augment.elastic_sigma,
            gamma_prob=augment.gamma_prob, gamma_range=tuple(augment.gamma_range),
            channel_group=data.slices_per_channel,
        )

    def eval_transform(self) -> SliceTransform:
        return build_eval_transform(self.config.data.input_size, self.config.data.interpolation)

    def _root(self) -> Path:
        root = self.config.data.root
        if root is None:
            raise FileNotFoundError(
                "data.root is not set: give the data folder (e.g. data.root=data/mri_lobes, made by "
                "`python tasks/segment.py prepare`)"
            )
        path = Path(root)
        if not path.is_dir():
            raise FileNotFoundError(f"data.root={root!r}: no such folder")
        return path

    def _nifti_cases(self) -> tuple[list[tuple[str, Path, Path | None]], list[tuple[str, Path, Path | None]]]:
        """(training cases, evaluation cases) of a NIfTI data set."""
        data = self.config.data
        cases = find_nifti_cases(self._root(), **_case_files(self.config))
        held_out = set(data.eval_cases)  # with data.val_fraction: the cases resolve_config drew
        unknown = held_out - {case for case, _, _ in cases}
        if unknown:
            known = ", ".join(case for case, _, _ in cases[:5])
            raise ConfigError(
                f"data.eval_cases names cases not in {data.root}: {sorted(unknown)} (it has {known} ...)"
            )
        train = [case for case in cases if case[0] not in held_out]
        evaluation = [case for case in cases if case[0] in held_out]
        if data.eval_root is not None:
            evaluation += find_nifti_cases(Path(data.eval_root), channels=_case_files(self.config)["channels"])
        return train, evaluation

    def write_split(self, path: Path) -> None:
        """Write the NIfTI case lists to `path` (main process only): what trained and what evaluates.

        ``{"source": "val_fraction" | "eval_cases" | "eval_root" | "none", "val_fraction", "seed",
        "train": [case, ...], "eval": [case, ...]}``; with `eval_root` its cases are listed under "eval".
        """
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return
        data = self.config.data
        train, evaluation = self._nifti_cases()
        source = ("val_fraction" if self.drawn_split else "eval_cases" if data.eval_cases
                  else "eval_root" if data.eval_root is not None else "none")
        record = {"source": source, "val_fraction": data.val_fraction, "seed": self.config.train.seed,
                  "train": [case for case, _, _ in train], "eval": [case for case, _, _ in evaluation]}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        logger.info("%d training and %d evaluation cases (%s) listed in %s", len(train), len(evaluation), source, path)

    def _nifti_args(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, **nifti_read_options(self.config)}

    def build_train_dataset(self) -> AugmentedSlices:
        """The training slices with seeded augmentation, every file checked before the first step.

        Synapse slices are checked from their .npz headers (keys, 2D shapes, numeric dtypes), NIfTI
        cases from their headers (readable, 3D, one grid shape) and then read in full (labels
        within model.num_classes). Bad ones are an error naming the file, or left out under
        ``data.on_bad_sample=skip`` (listed in ``skipped_samples.txt`` of the run folder).
        """
        data = self.config.data
        skip = data.on_bad_sample == "skip"
        if data.format == "synapse":
            source: Dataset = SynapseSliceDataset(self._root(), list_file=data.train_list,
                                                  num_classes=self.num_classes, list_dir=data.list_dir,
                                                  context_slices=data.context_slices)
            names = [str(path) for path in source.paths]
            skipped = self._handle(find_bad_files(names, lambda i: check_slice_header(names[i])), len(names))
            if skipped:
                keep = [i for i, name in enumerate(names) if name not in skipped]
                source.names = [source.names[i] for i in keep]
                source.paths = [source.paths[i] for i in keep]
        else:
            train, _ = self._nifti_cases()
            if not train:
                raise FileNotFoundError(f"data.root={data.root!r}: no training cases left after data.eval_cases")
            names = [_first_file(image) for _, image, _ in train]
            channels = _case_files(self.config)["channels"]
            problems = find_bad_files(names, lambda i: check_nifti_header(train[i][1], train[i][2], channels))
            skipped = self._handle(problems, len(names))
            train = [case for case, name in zip(train, names, strict=True) if name not in skipped]
            source = NiftiSliceDataset(train, skip_empty=data.skip_empty_slices, context_slices=data.context_slices,
                                       **self._nifti_args())
        return AugmentedSlices(source, self.train_transform(), seed=self.config.train.seed, skip_unreadable=skip)

    def _handle(self, problems: list[tuple[str, str]], total: int) -> set[str]:
        """The training files to leave out (`vit_training.data.handle_bad_samples` under data.on_bad_sample)."""
        return handle_bad_samples(problems, split="training", total=total, on_bad_sample=self.config.data.on_bad_sample,
                                  output_dir=self.config.train.output_dir)

    def build_eval_dataset(self) -> Dataset | None:
        """The evaluation volumes (`data.Volume` items, labels required), or None when there are none.

        Every case is read in full here (two at a time: volumes are large) so that an unreadable
        file, an image/label shape mismatch or a label outside model.num_classes stops the run
        before training rather than at its first evaluation; evaluation cases are never skipped.
        """
        data = self.config.data
        if data.format == "synapse":
            dataset: Dataset = SynapseVolumeDataset(self._root(), list_file=data.test_list,
                                                    num_classes=self.num_classes, list_dir=data.list_dir)
            names = [str(path) for path in dataset.paths]
        else:
            _, evaluation = self._nifti_cases()
            if not evaluation:
                return None
            dataset = NiftiVolumeDataset(evaluation, **self._nifti_args())
            names = [_first_file(image) for _, image, _ in dataset.cases]
        problems = find_bad_files(names, lambda i: dataset[i], threads=2)
        handle_bad_samples(problems, split="evaluation", total=len(names), on_bad_sample="error", output_dir=None)
        return dataset

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """(training slices, evaluation volumes or None)."""
        train = self.build_train_dataset()
        evaluation = self.build_eval_dataset()
        if self.config.data.format == "nifti":
            self.write_split(Path(self.config.train.output_dir) / SPLIT_FILE)
        if evaluation is None:
            logger.warning("no evaluation cases (data.eval_cases / data.eval_root): training without evaluation")
        return train, evaluation

    def collate_fn(self, train: bool) -> Callable[[list[Any]], Any] | None:
        """Training: the default stacking; evaluation: the list of volumes as is."""
        return None if train else _volume_list

    # -------------------------------------------------------------------------------- model and loss
    def build_model(self) -> TransUNet:
        """The TransUNet of `model` (pretrained backbone weights loaded when set), CPU, fp32."""
        return build_transunet(self.config.model)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``ce_weight * CE + dice_weight * Dice`` of one batch (images (B, 1, h, w), labels (B, h, w)).

        The labels are not range-checked here (a host-device sync per step): the datasets check
        every label file as they read it (`check_label_values`).

        Returns:
            (scalar loss, {"ce": cross-entropy, "dice_loss": 1 - mean soft Dice}) of the batch, the
            logged parts as 0-d device tensors (the loop reads them only at log steps).
        """
        images, labels = batch[0], batch[1]
        parts = self.criterion.components(model(images), labels, check=False)
        return parts["loss"], {"ce": parts["ce"].detach(), "dice_loss": parts["dice"].detach()}

    # -------------------------------------------------------------------------------- evaluation
    def predict_volume(self, model: nn.Module, volume: Volume | np.ndarray) -> np.ndarray:
        """Labels (S, H, W) uint8 of a `Volume` (or a float (S, H, W) array) at the config's input size."""
        image = volume.image if isinstance(volume, Volume) else volume
        data = self.config.data
        return predict_volume(model, image, data.input_size, data.interpolation,
                              batch_size=self.config.eval.slice_batch_size, context_slices=data.context_slices,
                              **self.config.eval.inference_options())

    def case_record(self, model: nn.Module, volume: Volume) -> dict[str, Any]:
        """One case's metrics per computed convention: {"case", "<mode>/dice": [...], "<mode>/hd95": [...]}."""
        if volume.label is None:
            raise ValueError(f"case {volume.case}: the evaluation volume has no labels")
        prediction = self.predict_volume(model, volume)
        if self._prediction_dir is not None and volume.geometry is not None:
            write_nifti_labels(self._prediction_dir / f"{volume.case}.nii.gz", prediction, volume)
        label, spacing = volume.label, volume.spacing
        if volume.geometry is not None and volume.geometry.native_label is not None:
            # Resampled to data.target_spacing: the metrics belong to the grid the labels were
            # drawn on, at its own spacing (orientation does not change Dice or HD95).
            prediction, label, spacing = volume.to_native(prediction), volume.native_label, volume.native_spacing
        record: dict[str, Any] = {"case": volume.case}
        for mode in self._modes():
            dice, hd95 = case_metrics(prediction, label, self.num_classes, mode=mode, spacing=spacing)
            record[f"{mode}/dice"] = dice.tolist()
            record[f"{mode}/hd95"] = hd95.tolist()
        return record

    def _modes(self) -> list[str]:
        chosen = self.config.eval.metric_mode
        others = [mode for mode in METRIC_MODES if mode != chosen] if self.config.eval.other_mode else []
        return [chosen, *others]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, output_dir: Path
                 ) -> dict[str, float]:
        """Per-class Dice and HD95 over the evaluation volumes, TransUNet's procedure.

        Every process predicts its own cases; the per-case rows are gathered with
        `gather_for_metrics(..., use_gather_object=True)` after each step and de-duplicated by case,
        so every case counts once whatever the number of processes. The main process writes
        ``per_case_<mode>.csv`` and ``summary.txt`` (the tables) to `output_dir`; with
        `eval.save_predictions` each process writes its NIfTI cases as ``predictions/<case>.nii.gz`` there.

        Returns:
            {"mean_dice", "mean_hd95", "dice/<class>", "hd95/<class>"} in `eval.metric_mode` (plus
            "excluded/<class>" in standard mode), and with `eval.other_mode` the same keys of the
            other convention prefixed "<mode>/"; identical on every process.
        """
        # The module inside DDP: volumes differ in slice count, so processes run different numbers
        # of forward passes, and a DDP forward may broadcast BatchNorm buffers (a collective) and hang.
        net = extract_model_from_parallel(model, keep_torch_compile=False)
        records: dict[str, dict[str, Any]] = {}
        # Every process writes its own cases' predictions (distinct files).
        self._prediction_dir = Path(output_dir) / PREDICTIONS_DIR if self.config.eval.save_predictions else None
        for batch in loader:
            local = [self.case_record(net, volume) for volume in batch]
            for record in accelerator.gather_for_metrics(local, use_gather_object=True):
                records.setdefault(record["case"], record)  # padding repeats a case: keep one
        cases = sorted(records)
        names = self.class_names
        metrics: dict[str, float] = {}
        tables: list[str] = []
        for position, mode in enumerate(self._modes()):
            shape = (len(cases), len(names))
            dice = np.array([records[case][f"{mode}/dice"] for case in cases], dtype=np.float64).reshape(shape)
            hd95 = np.array([records[case][f"{mode}/hd95"] for case in cases], dtype=np.float64).reshape(shape)
            summary = summarize(dice, hd95, names, mode)
            prefix = "" if position == 0 else f"{mode}/"
            metrics.update({f"{prefix}{key}": float(value) for key, value in summary.items()})
            if accelerator.is_main_process:
                write_case_csv(Path(output_dir) / f"per_case_{mode}.csv", cases, dice, hd95, names)
                unit = "voxels" if mode == "transunet" else "mm at each volume's spacing"
                title = f"{mode} convention ({len(cases)} cases, HD95 in {unit}):"
                tables.append(f"{title}\n{format_table(summary, names)}")
        if accelerator.is_main_process:
            text = "\n\n".join(tables)
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / SUMMARY_FILE).write_text(text + "\n")
            logger.info("evaluation of %d cases:\n%s", len(cases), text)
        return metrics

    @torch.no_grad()
    def visualize(self, model: nn.Module, batch: Any, output_dir: Path) -> None:
        """Write ``overlays.png``: `eval.overlay_slices` slices of `batch[0]` with truth and prediction."""
        count = self.config.eval.overlay_slices
        if count == 0 or not batch:
            return
        volume: Volume = batch[0]
        reference = volume.label if volume.label is not None else self.predict_volume(model, volume)
        indices = overlay_slice_indices(reference, count)
        images = volume.image[indices]
        predictions = self.predict_volume(model, images)
        truths = volume.label[indices] if volume.label is not None else None
        titles = [f"{volume.case} slice {index}" for index in indices]
        shown = images if images.ndim == 3 else images[:, 0]  # several channels: the first is drawn
        save_overlays(Path(output_dir) / OVERLAY_FILE, shown, predictions, self.class_names, truths, titles)

