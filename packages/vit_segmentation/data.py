"""Medical segmentation data in the layouts users bring: Synapse as TransUNet distributes it, and NIfTI.

Axis convention, everywhere in this package: a volume is an (S, H, W) array, or (S, C, H, W)
with C > 1 input channels (modalities). S is the slicing axis (the 2D model sees one H×W slice,
or C×H×W, at a time); for Synapse S is the axial axis Z. Spacing is given in mm along (S, H, W).

Synapse (TransUNet's preprocessed copy, ``datasets/README.md`` of Beckschen/TransUNet)::

    root/train_npz/caseXXXX_sliceNNN.npz   keys "image" (float, H×W, already in [0, 1]) and "label" (H×W)
    root/test_vol_h5/caseXXXX.npy.h5       HDF5 datasets "image" and "label", (Z, H, W)
    root/lists/train.txt, test_vol.txt     one name per line, no extension (TransUNet keeps them in
                                           lists/lists_Synapse/; pass ``list_dir`` for that)

NIfTI (Medical Segmentation Decathlon / nnU-Net layout)::

    root/dataset.json                      optional: class names, channel names, file ending (`read_dataset_json`)
    root/imagesTr/<case>_0000.nii.gz ...   nnU-Net: one file per channel, _0000 .. _000{C-1};
    root/imagesTr/<case>.nii.gz            or MSD: one file, 3D or 4D (X, Y, Z, C) for C channels
    root/labelsTr/<case>.nii.gz            same grid and affine as the image
    root/imagesTs/                         unlabelled cases, same naming (for ``predict``)

A NIfTI case is read in four steps (`read_nifti_volume`), each undone in reverse order by
`Volume.to_source` when its prediction is written (`write_nifti_labels`), so a prediction
overlays its own input voxel for voxel, whatever that input's orientation and spacing:

1. intensity normalisation per channel, on the stored voxels: CT clipped to a HU window and
   scaled to [0, 1] (TransUNet: [-125, 275]); MR clipped to percentiles of its nonzero voxels and
   scaled to [0, 1]; z-score: (x - mean) / std of the nonzero voxels, zeros kept at 0;
2. reorientation (``orientation``, e.g. ``"RAS"``: array axes 0, 1, 2 then run towards Right,
   Anterior, Superior) with nibabel's ``io_orientation`` / ``apply_orientation``: axes are only
   permuted and flipped, never interpolated (an oblique affine goes to its closest axes);
   ``None`` keeps the stored voxel order;
3. ``axis`` (0, 1 or 2 of the reoriented array; 2 = axial for RAS/LPS) becomes S, the other two
   keep their order as (H, W);
4. resampling to ``target_spacing`` (mm along the reoriented axes 0, 1, 2, e.g. x, y, z for
   RAS): images linear, labels nearest, the field of view kept (voxel centres at
   ``(i + 0.5) * n_old / n_new - 0.5`` of the old grid, as ``scipy.ndimage.zoom(grid_mode=True)``).

Every bad input is caught here, when the file is read, with a one-line ValueError /
FileNotFoundError that names the file or case and what was expected; in particular a label
outside [0, num_classes) never reaches the loss (where it would be a device-side assert).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import h5py
import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage
from torch.utils.data import Dataset

from vit_training.seeding import sample_seed

if TYPE_CHECKING:
    from .transforms import SliceTransform as SlicePipeline

__all__ = [
    "AugmentedSlices",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_MR_PERCENTILES",
    "Modality",
    "NiftiSliceDataset",
    "NiftiVolumeDataset",
    "SliceTransform",
    "SynapseSliceDataset",
    "SynapseVolumeDataset",
    "DatasetJson",
    "Geometry",
    "NORMALIZATIONS",
    "Volume",
    "case_name",
    "check_orientation",
    "normalize_zscore",
    "read_dataset_json",
    "resample",
    "stack_context_slices",
    "check_label_values",
    "check_nifti_header",
    "check_slice_header",
    "find_nifti_cases",
    "normalize_ct",
    "normalize_mr",
    "npz_array_headers",
    "read_list",
    "read_nifti_volume",
    "nifti_label_header",
    "write_nifti_labels",
]

logger = logging.getLogger(__name__)

Modality = Literal["ct", "mr"]
# Per-channel intensity normalisations (`data.normalization`).
NORMALIZATIONS: tuple[str, ...] = ("ct", "mr", "zscore")
# A transform of one training slice: (image float32 (H, W), label int64 (H, W)) -> anything.
SliceTransform = Callable[[np.ndarray, np.ndarray], Any]

# TransUNet's Synapse preprocessing (its datasets/README.md): clip HU to [-125, 275], scale to [0, 1].
DEFAULT_CT_WINDOW: tuple[float, float] = (-125.0, 275.0)
# Robust MR scaling: the 0.5th..99.5th percentile of the nonzero (in-head) voxels maps to [0, 1].
DEFAULT_MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
# nnU-Net names the single input channel <case>_0000; its label is <case>.
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Geometry:
    """How a NIfTI `Volume`'s working grid maps back to its source file (`Volume.to_source`).

    Attributes:
        source_shape: the stored array's shape (3D, as in the file).
        orientation: nibabel orientation transform (3, 2) from the stored axes to the reoriented
            ones (`nibabel.orientations.ornt_transform`), or None when the stored order was kept.
        native_shape: (S, H, W) after reorientation, before resampling.
        native_spacing: mm along (S, H, W) before resampling.
        native_label: int64 (S, H, W) on the native grid when the volume was resampled and had a
            label (metrics are computed there), else None.
    """

    source_shape: tuple[int, int, int]
    orientation: np.ndarray | None
    native_shape: tuple[int, int, int]
    native_spacing: tuple[float, float, float]
    native_label: np.ndarray | None = None


@dataclass
class Volume:
    """One 3D case, ready for slice-by-slice inference and volume metrics.

    Attributes:
        case: case id, e.g. ``"case0002"``.
        image: float32 (S, H, W), or (S, C, H, W) with C > 1 channels; intensity-normalised.
        label: int64 (S, H, W) with values in [0, num_classes), or None for an unlabelled case.
        spacing: voxel size in mm along (S, H, W); (1, 1, 1) when the source does not say.
        affine: the 4×4 voxel-to-world affine of the source NIfTI (stored axis order); None for Synapse h5.
        axis: the (reoriented) array axis that became S; 0 for Synapse.
        source: the file the image was read from (the first channel's), for messages and the
            header of written labels (None when built in memory).
        geometry: how to go back to the stored grid (NIfTI), or None: then S is moved back to
            `axis` and nothing else (Synapse, or volumes built in memory).
    """

    case: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    axis: int
    source: Path | None = None
    geometry: Geometry | None = None

    @property
    def channels(self) -> int:
        """C, the number of input channels (1 for an (S, H, W) image)."""
        return 1 if self.image.ndim == 3 else int(self.image.shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(S, H, W) of the working grid (the label / prediction shape)."""
        return (int(self.image.shape[0]), int(self.image.shape[-2]), int(self.image.shape[-1]))

    @property
    def native_spacing(self) -> tuple[float, float, float]:
        """mm along (S, H, W) of the grid before resampling (= `spacing` when not resampled)."""
        return self.geometry.native_spacing if self.geometry is not None else self.spacing

    @property
    def native_label(self) -> np.ndarray | None:
        """int64 (S, H, W) labels on the grid before resampling (= `label` when not resampled)."""
        if self.geometry is not None and self.geometry.native_label is not None:
            return self.geometry.native_label
        return self.label

    def to_native(self, labels: np.ndarray) -> np.ndarray:
        """Labels (S, H, W) of the working grid resampled (nearest) onto the grid before resampling."""
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise ValueError(f"case {self.case!r}: labels shape {labels.shape} differs from the volume's {self.shape}")
        if self.geometry is None or tuple(self.geometry.native_shape) == labels.shape:
            return labels
        return resample(labels, self.geometry.native_shape, order=0)

    def to_source(self, labels: np.ndarray) -> np.ndarray:
        """Labels (S, H, W) of the working grid in the stored file's voxel order and shape.

        Undoes `read_nifti_volume`: resampling (nearest), the move of `axis` to S, the reorientation.
        """
        data = np.moveaxis(self.to_native(labels), 0, self.axis)
        if self.geometry is not None and self.geometry.orientation is not None:
            data = apply_orientation(data, _inverse_ornt(self.geometry.orientation))
        return np.ascontiguousarray(data)


# --------------------------------------------------------------------------------------------------
# Checks and intensity normalisation (shared by every loader and by `prepare`)
# --------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message with newlines folded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(repr(v.item()) for v in values[:limit])
    return shown + (f", ... ({len(values)} distinct)" if len(values) > limit else "")


def check_label_values(label: np.ndarray, num_classes: int | None, where: str) -> np.ndarray:
    """A label array as int64 after checking it holds whole numbers in [0, num_classes).

    Args:
        label: any numeric array (Synapse ships float labels; NIfTI labels may be scaled floats).
        num_classes: C; None checks only that the values are whole and >= 0.
        where: the file or case named in the error.

    Returns:
        int64 array, same shape.

    Raises:
        ValueError: non-numeric dtype, non-integral or non-finite values, or values outside [0, C).
    """
    label = np.asarray(label)
    if label.dtype == bool:
        label = label.astype(np.uint8)
    if not (np.issubdtype(label.dtype, np.integer) or np.issubdtype(label.dtype, np.floating)):
        raise ValueError(f"{where}: label must be numeric, got dtype {label.dtype}")
    if np.issubdtype(label.dtype, np.floating):
        bad = ~np.isfinite(label) | (label != np.round(label))
        if bad.any():
            raise ValueError(
                f"{where}: label values must be whole class indices, got {_describe(np.unique(label[bad]))}"
            )
    upper = np.inf if num_classes is None else num_classes
    outside = (label < 0) | (label >= upper)
    if outside.any():
        expected = "whole numbers >= 0" if num_classes is None else f"class indices in [0, {num_classes})"
        raise ValueError(
            f"{where}: label values must be {expected}, got {_describe(np.unique(label[outside]))}"
        )
    return label.astype(np.int64)


def _check_image(image: np.ndarray, where: str) -> None:
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"{where}: image must be real-valued, got dtype {image.dtype}")
    finite = np.isfinite(image)
    if not finite.all():
        raise ValueError(
            f"{where}: image has {int((~finite).sum())} NaN/inf voxels; expected finite intensities"
        )


def normalize_ct(image: np.ndarray, window: tuple[float, float] = DEFAULT_CT_WINDOW) -> np.ndarray:
    """CT intensities (HU) clipped to ``window`` = (low, high), scaled to [0, 1]; float32, same shape."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"ct_window must be (low, high) with high > low, got {tuple(window)}")
    clipped = np.clip(np.asarray(image, dtype=np.float32), low, high)
    return ((clipped - np.float32(low)) / np.float32(high - low)).astype(np.float32)


def normalize_mr(image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES) -> np.ndarray:
    """MR intensities clipped to the given percentiles of the nonzero voxels and scaled to [0, 1]; float32.

    Percentiles of the nonzero voxels only, because the zero-filled background outside the head
    would otherwise pull the low percentile to 0. An all-zero (or constant) image maps to zeros.
    """
    low_q, high_q = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= low_q < high_q <= 100.0:
        raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {tuple(percentiles)}")
    image = np.asarray(image, dtype=np.float32)
    foreground = image[image != 0]
    if foreground.size == 0:
        return np.zeros_like(image)
    low, high = np.percentile(foreground, (low_q, high_q))
    if not high > low:
        return np.zeros_like(image)
    clipped = np.clip(image, np.float32(low), np.float32(high))
    return ((clipped - np.float32(low)) / np.float32(high - low)).astype(np.float32)


def normalize_zscore(image: np.ndarray) -> np.ndarray:
    """(x - mean) / std of the nonzero voxels, zero voxels kept at 0 (nnU-Net's masked z-score); float32.

    For MR channels whose background is 0 (skull-stripped BraTS-style scans). An all-zero or
    constant image maps to zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = image != 0
    foreground = image[mask].astype(np.float64)
    if foreground.size == 0 or not foreground.std() > 0:
        return np.zeros_like(image)
    out = ((image - np.float32(foreground.mean())) / np.float32(foreground.std())).astype(np.float32)
    out[~mask] = 0.0
    return out


def _normalize(
    image: np.ndarray, modality: str, ct_window: tuple[float, float], mr_percentiles: tuple[float, float]
) -> np.ndarray:
    if modality == "ct":
        return normalize_ct(image, ct_window)
    if modality == "mr":
        return normalize_mr(image, mr_percentiles)
    if modality == "zscore":
        return normalize_zscore(image)
    raise ValueError(f"modality / normalization must be one of {', '.join(NORMALIZATIONS)}, got {modality!r}")


# --------------------------------------------------------------------------------------------------
# Geometry: orientation and resampling
# --------------------------------------------------------------------------------------------------
_AXIS_LETTERS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def check_orientation(code: str | None) -> str | None:
    """A target orientation code, upper-cased: three letters naming each anatomical axis once
    (one of L/R, one of P/A, one of I/S, e.g. ``"RAS"``, ``"LPS"``, ``"SAR"``); ``None`` or
    ``"none"`` (keep the stored voxel order) gives None.

    Raises:
        ValueError: anything else, naming the value.
    """
    if code is None or str(code).lower() == "none":
        return None
    text = str(code).upper()
    if len(text) != 3 or any(c not in _AXIS_LETTERS for c in text) or len({_AXIS_LETTERS[c] for c in text}) != 3:
        raise ValueError(
            f"orientation={code!r} must be three letters naming each axis once (one of L/R, P/A, I/S, "
            "e.g. RAS or LPS) or 'none'"
        )
    return text


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes `ornt` (output axis ornt[i, 0] goes back to axis i)."""
    inverse = np.zeros_like(np.asarray(ornt, dtype=np.float64))
    for axis, (target, flip) in enumerate(np.asarray(ornt)):
        inverse[int(target)] = (axis, flip)
    return inverse


def _reorientation(affine: np.ndarray, code: str) -> np.ndarray:
    """The transform (3, 2) taking the stored axes of `affine` to orientation `code` (closest axes
    for an oblique affine)."""
    return ornt_transform(io_orientation(affine), axcodes2ornt(tuple(code)))


def resample(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """An array resampled onto a grid of `shape` covering the same field of view.

    Voxel i of the new grid sits at ``(i + 0.5) * n_old / n_new - 0.5`` of the old one along each
    axis (pixel-centre geometry, `scipy.ndimage.zoom` with ``grid_mode=True``), edges extended.

    Args:
        volume: (..., A, B, D) array; only the last ``len(shape)`` axes are resampled.
        shape: the new sizes of those axes.
        order: 1 = linear (images, float32 out), 0 = nearest (labels, dtype kept).
    """
    volume = np.asarray(volume)
    lead = volume.ndim - len(shape)
    if tuple(volume.shape[lead:]) == tuple(int(n) for n in shape):
        return volume
    zoom = [1.0] * lead + [int(n) / int(m) for n, m in zip(shape, volume.shape[lead:], strict=True)]
    data = volume.astype(np.float32, copy=False) if order > 0 else volume
    out = ndimage.zoom(data, zoom, order=order, mode="nearest", grid_mode=True, prefilter=False)
    assert out.shape[lead:] == tuple(int(n) for n in shape), (out.shape, shape)
    return out


def _target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


# --------------------------------------------------------------------------------------------------
# Synapse (TransUNet's npz slices and h5 volumes)
# --------------------------------------------------------------------------------------------------


def read_list(path: str | os.PathLike) -> list[str]:
    """The names in a Synapse list file: one per line, blank lines skipped, ``.npz``/``.npy.h5`` stripped.

    (TransUNet's train.txt and test_vol.txt hold bare names; its all.lst names end in ``.npy.h5``.)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: list file not found (expected one case or slice name per line)")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.strip()
        for suffix in (".npy.h5", ".npz", ".h5"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        if name:
            names.append(name)
    if not names:
        raise ValueError(f"{path}: list file is empty (expected one case or slice name per line)")
    return names


def _list_path(root: Path, list_dir: str | os.PathLike | None, list_file: str) -> Path:
    return (Path(list_dir) if list_dir is not None else root / "lists") / list_file


def _missing_files(paths: Sequence[Path], what: str, list_path: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{missing[0]}: {what} named in {list_path} not found{more}")


def stack_context_slices(volume: np.ndarray, context_slices: int, at: Sequence[int] | None = None) -> np.ndarray:
    """2.5D input: slices with their `context_slices` neighbours on each side as channels.

    Args:
        volume: (S, C, H, W) slices of C channels.
        context_slices: k >= 0; slices beyond either end repeat the first / last slice.
        at: the slice indices to return (default all S): a batch of a volume, or one training slice,
            without stacking the rest.

    Returns:
        (len(at), C * (2k + 1), H, W), channel-major: channel c of slice z holds input channels
        ``c * (2k + 1) .. c * (2k + 1) + 2k`` = slices z-k .. z+k. k = 0 returns ``volume[at]``
        (`volume` itself when `at` is None).
    """
    positions = np.arange(volume.shape[0]) if at is None else np.asarray(at, dtype=np.int64)
    if context_slices == 0:
        return volume if at is None else volume[positions]
    if volume.ndim != 4:
        raise ValueError(f"expected slices (S, C, H, W), got shape {volume.shape}")
    offsets = np.arange(-context_slices, context_slices + 1)
    neighbours = np.clip(positions[:, None] + offsets[None, :], 0, volume.shape[0] - 1)  # (N, 2k + 1)
    stacked = volume[neighbours]  # (N, 2k + 1, C, H, W)
    return np.ascontiguousarray(stacked.transpose(0, 2, 1, 3, 4).reshape(len(positions), -1, *volume.shape[2:]))


_SLICE_NAME = re.compile(r"^(?P<case>.+)_slice(?P<index>\d+)$")


class SynapseSliceDataset(Dataset):
    """Training slices in TransUNet's Synapse layout: ``root/train_npz/<name>.npz``.

    Each item is ``(image, label)``: float32 (H, W) and int64 (H, W) with values in
    [0, num_classes); with a ``transform``, ``transform(image, label)`` instead.

    Args:
        root: the data set folder (holds ``train_npz/`` and, by default, ``lists/``).
        list_file: the list of slice names (no extension) inside the list folder.
        num_classes: C, background included; labels are checked against it on every read.
        list_dir: the folder of the list files; default ``root/lists``.
        transform: optional callable applied to each ``(image, label)`` pair.
        context_slices: k > 0 adds the images of the slices ``<case>_slice<NNN-k>`` ..
            ``<case>_slice<NNN+k>`` (same zero padding of NNN) of ``train_npz/`` as channels:
            image (2k + 1, H, W), `stack_context_slices`' order. A neighbour that has no file (the
            ends of the volume, or slices left out when the set was written) is replaced by the
            nearest one towards the centre slice; the list's names must then end in ``_sliceNNN``.
    """

    def __init__(
        self,
        root: str | Path,
        list_file: str = "train.txt",
        num_classes: int = 9,
        list_dir: str | Path | None = None,
        transform: SliceTransform | None = None,
        context_slices: int = 0,
    ) -> None:
        self.root = Path(root)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.context_slices = int(context_slices)
        list_path = _list_path(self.root, list_dir, list_file)
        self.names: list[str] = read_list(list_path)
        self.paths: list[Path] = [self.root / "train_npz" / f"{name}.npz" for name in self.names]
        _missing_files(self.paths, "slice", list_path)
        # Each listed slice's context files, resolved once from one listing of train_npz/ (keyed by
        # name, so it stays valid when bad slices are dropped from names / paths afterwards).
        self._context_paths: dict[str, list[Path]] = {}
        if self.context_slices:
            bad = [name for name in self.names if not _SLICE_NAME.match(name)]
            if bad:
                raise ValueError(f"{list_path}: slice name {bad[0]!r} does not end in _slice<number>; "
                                 "data.context_slices finds a slice's neighbours by that number")
            stored = {path.stem for path in (self.root / "train_npz").glob("*.npz")}
            self._context_paths = {name: self._neighbour_paths(name, stored) for name in self.names}

    def _neighbour_paths(self, name: str, stored: set[str]) -> list[Path]:
        """The files of slice `name`'s context, z-k .. z+k, among the `stored` slice names (a missing
        one -> the nearest towards z, ending at the slice itself)."""
        match = _SLICE_NAME.match(name)
        assert match is not None  # checked by the caller
        case, digits = match["case"], match["index"]
        centre = int(digits)
        paths = []
        for offset in range(-self.context_slices, self.context_slices + 1):
            step = -1 if offset > 0 else 1
            while offset != 0 and f"{case}_slice{centre + offset:0{len(digits)}d}" not in stored:
                offset += step
            paths.append(self.root / "train_npz" / f"{case}_slice{centre + offset:0{len(digits)}d}.npz")
        return paths

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked ``(image float32 (H, W), label int64 (H, W))`` of one slice, no transform
        (image (2k + 1, H, W) with `context_slices` k > 0)."""
        image, label = self._read_file(self.paths[index])
        if not self.context_slices:
            return image, label
        images = []
        for path in self._context_paths[self.names[index]]:
            neighbour = image if path == self.paths[index] else self._read_file(path)[0]
            if neighbour.shape != image.shape:
                raise ValueError(f"{path}: shape {neighbour.shape}, but its neighbour {self.paths[index]} is "
                                 f"{image.shape}; data.context_slices stacks slices of one shape")
            images.append(neighbour)
        return np.stack(images), label

    def _read_file(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """One slice file's checked image float32 (H, W) and label int64 (H, W)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if not hasattr(data, "files"):
                    raise ValueError("a single .npy array, not an .npz archive")
                keys = sorted(data.files)
                arrays = {key: data[key] for key in ("image", "label") if key in keys}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            # ValueError also covers object (pickled) arrays, which allow_pickle=False refuses.
            raise ValueError(
                f"{path}: not a readable .npz file with numeric arrays ({_one_line(exc)})"
            ) from exc
        missing = [key for key in ("image", "label") if key not in arrays]
        if missing:
            raise ValueError(
                f"{path}: missing key {missing[0]!r} (expected 'image' and 'label', found {keys})"
            )
        image, label = arrays["image"], arrays["label"]
        if image.ndim != 2 or label.shape != image.shape:
            raise ValueError(
                f"{path}: expected 2D 'image' and 'label' of one shape (H, W), "
                f"got {image.shape} and {label.shape}"
            )
        _check_image(image, str(path))
        return image.astype(np.float32), check_label_values(label, self.num_classes, str(path))

    def __getitem__(self, index: int) -> Any:
        image, label = self.read(index)
        return self.transform(image, label) if self.transform is not None else (image, label)


def _h5_spacing(handle: h5py.File, path: Path) -> tuple[float, float, float]:
    """Spacing from a ``spacing`` attribute or dataset, (Z, H, W) order; (1, 1, 1) when there is none."""
    if "spacing" in handle.attrs:
        raw = np.asarray(handle.attrs["spacing"])
    elif "spacing" in handle:
        raw = np.asarray(handle["spacing"][()])
    else:
        return (1.0, 1.0, 1.0)
    values = raw.astype(np.float64).ravel()
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{path}: 'spacing' must be 3 positive numbers (Z, H, W), got {raw.tolist()}")
    return (float(values[0]), float(values[1]), float(values[2]))


class SynapseVolumeDataset(Dataset):
    """Test volumes in TransUNet's Synapse layout: ``root/test_vol_h5/<case>.npy.h5``, read one per item.

    Each item is a `Volume` with ``image`` float32 (Z, H, W) as stored (TransUNet's volumes are
    already in [0, 1]), ``label`` int64 (Z, H, W), spacing from an optional ``spacing`` attribute or
    dataset ((Z, H, W) order, else (1, 1, 1)), ``affine`` None and ``axis`` 0.

    Args:
        root: the data set folder (holds ``test_vol_h5/`` and, by default, ``lists/``).
        list_file: the list of case names inside the list folder.
        num_classes: C, background included; labels are checked against it.
        list_dir: the folder of the list files; default ``root/lists``.
        require_label: when False, a file without a "label" dataset gives ``label=None`` (prediction only).
    """

    def __init__(
        self,
        root: str | Path,
        list_file: str = "test_vol.txt",
        num_classes: int = 9,
        list_dir: str | Path | None = None,
        require_label: bool = True,
    ) -> None:
        self.root = Path(root)
        self.num_classes = int(num_classes)
        self.require_label = require_label
        list_path = _list_path(self.root, list_dir, list_file)
        self.names: list[str] = read_list(list_path)
        self.paths: list[Path] = [self.root / "test_vol_h5" / f"{name}.npy.h5" for name in self.names]
        _missing_files(self.paths, "volume", list_path)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Volume:
        path = self.paths[index]
        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise ValueError(f"{path}: not a readable HDF5 file ({_one_line(exc)})") from exc
        with handle:
            if "image" not in handle:
                raise ValueError(f"{path}: missing dataset 'image' (expected 'image' and 'label', (Z, H, W))")
            image = np.asarray(handle["image"][()])
            label = None
            if "label" in handle:
                label = np.asarray(handle["label"][()])
            elif self.require_label:
                raise ValueError(f"{path}: missing dataset 'label' (expected 'image' and 'label', (Z, H, W))")
            spacing = _h5_spacing(handle, path)
        if image.ndim != 3:
            raise ValueError(f"{path}: 'image' must be a (Z, H, W) volume, got shape {image.shape}")
        if label is not None and label.shape != image.shape:
            raise ValueError(f"{path}: 'label' shape {label.shape} differs from 'image' shape {image.shape}")
        _check_image(image, str(path))
        checked = None if label is None else check_label_values(label, self.num_classes, str(path))
        return Volume(
            case=self.names[index],
            image=np.ascontiguousarray(image, dtype=np.float32),
            label=checked,
            spacing=spacing,
            affine=None,
            axis=0,
            source=path,
        )


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------


def _strip_nifti_suffix(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def case_name(image_path: str | os.PathLike) -> str:
    """The case id of a NIfTI image file: its name without ``.nii[.gz]`` and nnU-Net's ``_0000``."""
    name = Path(image_path).name
    stem = _strip_nifti_suffix(name) or name
    match = _NNUNET_CHANNEL.match(stem)
    return match.group("case") if match and match.group("channel") == "0000" else stem


def _load_nifti(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: NIfTI file not found")
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, zlib errors ...
        raise ValueError(f"{path}: not a readable NIfTI file ({_one_line(exc)})") from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: expected a NIfTI-1/2 image, got {type(image).__name__}")
    return image


def _as_3d(data: np.ndarray, path: Path, channels: int = 1) -> np.ndarray:
    """A NIfTI array as 3D (trailing 1s dropped), or as (X, Y, Z, C) when `channels` > 1 and the
    file holds them as a 4th dimension (the MSD layout)."""
    while data.ndim > 3 and data.shape[-1] == 1:  # NIfTI pads unused dimensions with 1
        data = data[..., 0]
    if data.ndim == 4 and channels > 1 and data.shape[3] == channels:
        return data
    if data.ndim != 3:
        expected = "a 3D volume" if channels == 1 else f"a 3D volume or (X, Y, Z, {channels}) channels"
        raise ValueError(
            f"{path}: expected {expected}, got shape {data.shape} "
            f"(data.channels names {channels} channel{'s' if channels != 1 else ''})"
        )
    return data


def _read_voxels(nii: nib.Nifti1Image, path: Path, as_float: bool) -> np.ndarray:
    try:
        if as_float:
            return np.asarray(nii.get_fdata(dtype=np.float32, caching="unchanged"))
        return np.asanyarray(nii.dataobj)
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt voxel data
        raise ValueError(f"{path}: could not read the voxel data ({_one_line(exc)})") from exc


def _check_same_grid(path: Path, nii: nib.Nifti1Image, shape: tuple[int, ...], reference: Path,
                     reference_nii: nib.Nifti1Image, what: str) -> None:
    """Raise a one-line ValueError naming both files when `nii` is not on the grid of `reference_nii`."""
    if tuple(shape[:3]) != tuple(reference_nii.shape[:3]):
        raise ValueError(f"{path}: {what} shape {tuple(shape[:3])} differs from image {reference} "
                         f"shape {tuple(reference_nii.shape[:3])}")
    zooms = tuple(float(z) for z in nii.header.get_zooms()[:3])
    reference_zooms = tuple(float(z) for z in reference_nii.header.get_zooms()[:3])
    if not np.allclose(zooms, reference_zooms, rtol=1e-4, atol=1e-5):
        raise ValueError(f"{path}: {what} spacing {zooms} differs from image {reference} spacing {reference_zooms}")
    # Tolerance: affines are stored as float32 (sform) or rebuilt from quaternions (qform).
    if not np.allclose(nii.affine, reference_nii.affine, rtol=1e-4, atol=1e-3):
        raise ValueError(
            f"{path}: {what} affine differs from image {reference} affine "
            f"({np.round(nii.affine, 4).tolist()} vs {np.round(reference_nii.affine, 4).tolist()})"
        )


def read_nifti_volume(
    image_path: str | os.PathLike | Sequence[str | os.PathLike],
    label_path: str | os.PathLike | None = None,
    modality: str = "ct",
    axis: int = 2,
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
    mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES,
    num_classes: int | None = None,
    case: str | None = None,
    *,
    orientation: str | None = None,
    target_spacing: Sequence[float] | float | None = None,
    normalization: Sequence[str] | None = None,
    channels: int = 1,
) -> Volume:
    """Read one NIfTI case (one file per channel, or one 4D file) and its label map as a `Volume`.

    The steps, in this order (see the module docstring): per-channel normalisation,
    reorientation, `axis` to S, resampling. `Volume.geometry` records what `Volume.to_source`
    needs to undo them.

    Args:
        image_path: the image (``.nii`` or ``.nii.gz``), 3D (trailing singleton dimensions
            allowed); or the C channel files of the case in order (``_0000``, ``_0001``, ...); or one
            4D file (X, Y, Z, C) when ``channels`` = C > 1 (MSD).
        label_path: its label map on the same grid, or None.
        modality: the normalisation of every channel when ``normalization`` is None:
            ``"ct"`` (clip HU to ``ct_window``, scale to [0, 1]), ``"mr"`` (clip to the
            ``mr_percentiles`` of the nonzero voxels, scale to [0, 1]) or ``"zscore"``.
        axis: the array axis (0, 1 or 2) of the reoriented array that becomes S, the slicing axis;
            2 is axial for RAS / LPS. The other two axes keep their order as (H, W).
        ct_window: (low, high) in HU.
        mr_percentiles: (low, high) percentiles in [0, 100].
        num_classes: C: label values must be whole numbers in [0, C); None checks only >= 0.
        case: the case id; default the image file name without extension (and nnU-Net's ``_0000``).
        orientation: target axis codes (e.g. ``"RAS"``), or None / ``"none"`` to keep the stored order.
        target_spacing: mm along the reoriented array axes 0, 1, 2 (three numbers, or one for
            all); None keeps the native grid.
        normalization: one normalisation per channel (``"ct"``, ``"mr"``, ``"zscore"``), or one for all.
        channels: C, the number of input channels expected.

    Returns:
        `Volume` with float32 image (S, H, W) (C = 1) or (S, C, H, W), int64 label (S, H, W) (or
        None), spacing in mm along (S, H, W) of the working grid, the stored affine, ``axis``
        and `Geometry`.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: unreadable file, wrong dimensionality, NaN/inf intensities, channel files or
            image and label on different grids (shape, affine or spacing: both files named), or
            label values that are not class indices.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (the array axis to slice along), got {axis!r}")
    code = check_orientation(orientation)
    channels = int(channels)
    paths = ([Path(image_path)] if isinstance(image_path, (str, os.PathLike))
             else [Path(path) for path in image_path])
    if not paths:
        raise ValueError("read_nifti_volume needs at least one image file")
    if len(paths) not in (1, channels):
        raise ValueError(f"{paths[0]}: {len(paths)} channel files given, but {channels} channels expected")
    kinds = list(normalization) if normalization else [modality]
    if len(kinds) == 1:
        kinds = kinds * channels
    if len(kinds) != channels:
        raise ValueError(f"normalization names {len(kinds)} channels, but the case has {channels}")
    for kind in kinds:
        if kind not in NORMALIZATIONS:
            raise ValueError(f"modality / normalization must be one of {', '.join(NORMALIZATIONS)}, got {kind!r}")
    if target_spacing is not None:
        target = [float(t) for t in (target_spacing if isinstance(target_spacing, Sequence) else [target_spacing])]
        target = target * 3 if len(target) == 1 else target
        if len(target) != 3 or min(target) <= 0:
            raise ValueError(f"target_spacing={list(target)} must be one or three positive numbers (mm)")

    image_path = paths[0]
    image_nii = _load_nifti(image_path)
    raw = _as_3d(_read_voxels(image_nii, image_path, as_float=True), image_path, channels if len(paths) == 1 else 1)
    stacked = [raw] if raw.ndim == 3 else [raw[..., c] for c in range(raw.shape[3])]
    if len(paths) == 1 and len(stacked) != channels:
        raise ValueError(f"{image_path}: expected {channels} channels (one 4D file or {channels} files "
                         f"<case>_0000 ... _{channels - 1:04d}), got shape {raw.shape}")
    for path in paths[1:]:
        nii = _load_nifti(path)
        data = _as_3d(_read_voxels(nii, path, as_float=True), path)
        _check_same_grid(path, nii, data.shape, image_path, image_nii, "channel")
        stacked.append(data)
    for path, data in zip(paths if len(paths) > 1 else paths * len(stacked), stacked, strict=True):
        _check_image(data, str(path))
    zooms = tuple(float(z) for z in image_nii.header.get_zooms()[:3])
    source_shape = tuple(int(n) for n in stacked[0].shape)

    label = None
    if label_path is not None:
        label_path = Path(label_path)
        label_nii = _load_nifti(label_path)
        label_raw = _as_3d(_read_voxels(label_nii, label_path, as_float=False), label_path)
        _check_same_grid(label_path, label_nii, label_raw.shape, image_path, image_nii, "label")
        label = check_label_values(label_raw, num_classes, str(label_path))

    images = [_normalize(data, kind, ct_window, mr_percentiles) for data, kind in zip(stacked, kinds, strict=True)]
    ornt = None
    if code is not None:
        ornt = _reorientation(image_nii.affine, code)
        images = [apply_orientation(image, ornt) for image in images]
        label = apply_orientation(label, ornt) if label is not None else None
        reordered = [0.0, 0.0, 0.0]
        for source_axis, (target_axis, _flip) in enumerate(ornt):
            reordered[int(target_axis)] = zooms[source_axis]
        zooms = tuple(reordered)
    others = [a for a in range(3) if a != axis]
    order = [axis, *others]
    spacing = tuple(zooms[a] for a in order)
    image = np.stack([np.moveaxis(image, axis, 0) for image in images], axis=1)  # (S, C, H, W)
    label = np.moveaxis(label, axis, 0) if label is not None else None
    native_shape = (int(image.shape[0]), int(image.shape[2]), int(image.shape[3]))
    native_spacing, native_label = spacing, None
    if target_spacing is not None:
        shape = _target_shape(native_shape, spacing, [target[a] for a in order])
        if shape != native_shape:
            image = resample(image.transpose(1, 0, 2, 3), shape, order=1).transpose(1, 0, 2, 3)
            native_label = label
            label = resample(label, shape, order=0) if label is not None else None
            spacing = tuple(s * n / m for s, n, m in zip(spacing, native_shape, shape, strict=True))
    image = image[:, 0] if channels == 1 else image
    return Volume(
        case=case if case is not None else case_name(image_path),
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=None if label is None else np.ascontiguousarray(label),
        spacing=tuple(float(s) for s in spacing),
        affine=np.asarray(image_nii.affine, dtype=np.float64),
        axis=axis,
        source=image_path,
        geometry=Geometry(source_shape=source_shape, orientation=ornt, native_shape=native_shape,
                          native_spacing=tuple(float(s) for s in native_spacing),
                          native_label=None if native_label is None else np.ascontiguousarray(native_label)),
    )


def write_nifti_labels(path: str | os.PathLike, labels: np.ndarray, volume: Volume) -> None:
    """Write an (S, H, W) label map as NIfTI on the grid of ``volume``'s source image.

    `Volume.to_source` undoes what reading did (resampling back with nearest neighbours, S moved
    back to ``volume.axis``, the reorientation inverted) and the source affine is reused, so the
    file overlays the source image voxel for voxel. When ``volume.source`` is a NIfTI file, the
    output header is built from its header (`nifti_label_header`): qform/sform matrices and
    codes, intent, description, units and pixdim are kept, so a viewer puts the labels in the
    same space (e.g. MNI, code 4) as the input. A volume without an affine (Synapse h5) gets a
    diagonal affine with its spacing. Stored as uint8 (int16 above 255).

    Args:
        path: the output file (``.nii.gz`` or ``.nii``); its folder is created.
        labels: integer (S, H, W), the working grid of ``volume`` (`Volume.shape`).
        volume: the `Volume` the labels belong to.
    """
    labels = np.asarray(labels)
    if labels.shape != volume.shape:
        raise ValueError(
            f"{path}: labels shape {labels.shape} differs from case {volume.case!r} "
            f"image shape {volume.shape}"
        )
    write_source_labels(path, volume.to_source(labels), volume)


def write_source_labels(path: str | os.PathLike, labels: np.ndarray, volume: Volume) -> None:
    """Write labels already in the stored voxel order of ``volume``'s source (`Volume.to_source`)."""
    labels = check_label_values(np.asarray(labels), None, f"{path} (case {volume.case!r})")
    if labels.size and labels.max() > np.iinfo(np.int16).max:
        raise ValueError(f"{path}: label values above {np.iinfo(np.int16).max} are not supported")
    dtype = np.uint8 if labels.size == 0 or labels.max() < 256 else np.int16
    data = labels.astype(dtype)
    if volume.affine is not None:
        affine = np.asarray(volume.affine, dtype=np.float64)
    else:
        # Spacing is (S, H, W); put the S entry back where the source axis was.
        others = [a for a in range(3) if a != volume.axis]
        source_spacing = [0.0, 0.0, 0.0]
        source_spacing[volume.axis] = volume.spacing[0]
        source_spacing[others[0]], source_spacing[others[1]] = volume.spacing[1], volume.spacing[2]
        affine = np.diag([*source_spacing, 1.0])
    source = nifti_label_header(volume.source, dtype) if volume.source is not None else None
    if source is None:
        image = nib.Nifti1Image(np.asfortranarray(data), affine)
        image.header.set_xyzt_units("mm")
    else:
        image_class, header = source
        image = image_class(np.asfortranarray(data), affine, header=header)
        # The constructor may re-derive the transforms from `affine`; the source's own matrices
        # and codes are what a viewer must see.
        image.set_qform(header.get_qform(), code=int(header["qform_code"]))
        image.set_sform(header.get_sform(), code=int(header["sform_code"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def nifti_label_header(
    source: str | os.PathLike, dtype: np.dtype | type
) -> tuple[type[nib.Nifti1Image], nib.Nifti1Header] | None:
    """The header for a label map of the NIfTI image `source`: a copy of its header, label-ready.

    Everything of the source header is kept (qform/sform matrices and codes, intent,
    description, units, pixdim) except what describes the voxel values: the data type becomes
    `dtype`, the intensity scaling is cleared (labels are stored as is) and the display range
    ``cal_min``/``cal_max`` is reset.

    Returns:
        (the image class of the source, NIfTI-1 or NIfTI-2; the header), or None when `source`
        is not a readable NIfTI file (e.g. a Synapse h5 case).
    """
    path = Path(source)
    if not path.name.lower().endswith((".nii", ".nii.gz")) or not path.is_file():
        return None
    try:
        image = nib.load(str(path))
    except Exception:  # nibabel raises ImageFileError, OSError, EOFError ...: no header to keep
        return None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        return None
    header = image.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(np.nan, np.nan)
    header["cal_min"] = 0
    header["cal_max"] = 0
    return type(image), header


CaseImages = Path | tuple[Path, ...]  # one file (3D, or 4D with the channels) or one file per channel


def find_nifti_cases(
    root: str | os.PathLike, images_dir: str = "imagesTr", labels_dir: str | None = "labelsTr", channels: int = 1,
    file_ending: str | None = None,
) -> list[tuple[str, CaseImages, Path | None]]:
    """The (case, image(s), label) triples of an MSD / nnU-Net style folder, sorted by case.

    ``root/imagesTr/<case>.nii.gz`` pairs with ``root/labelsTr/<case>.nii.gz``; nnU-Net's
    ``<case>_0000.nii.gz`` pairs with ``<case>.nii.gz``. With ``channels`` = C > 1 a case is
    either its C files ``<case>_0000`` ... ``<case>_{C-1:04d}`` (a tuple of paths) or one MSD 4D file
    ``<case>.nii.gz`` (checked when read). Hidden files (the ``._*`` AppleDouble files inside the
    MSD tarballs) are skipped. Without a ``labelsTr`` folder every label is None.

    Args:
        root: the data set folder.
        images_dir, labels_dir: the image and label folder names under `root` (labels_dir None: no labels).
        channels: C, the input channels of every case.
        file_ending: dataset.json's ``file_ending`` (e.g. ``".nii.gz"``); None accepts .nii.gz and .nii.

    Raises:
        FileNotFoundError: ``root/imagesTr`` is missing.
        ValueError: no images; a labels folder exists but lacks a case's label; a channel file
            missing (naming the case and the file); more channel files than ``channels``.
    """
    root = Path(root)
    image_folder = root / images_dir
    label_folder = root / labels_dir if labels_dir is not None else None
    if not image_folder.is_dir():
        raise FileNotFoundError(
            f"{image_folder}: images folder not found (expected {images_dir}/*.nii.gz under {root})"
        )
    suffixes = (file_ending,) if file_ending else NIFTI_SUFFIXES
    has_labels = label_folder is not None and label_folder.is_dir()
    files: dict[str, dict[int, Path]] = {}  # case -> {channel (-1: no suffix): path}
    for image_path in sorted(image_folder.iterdir()):
        stem = next((image_path.name[: -len(x)] for x in suffixes if image_path.name.endswith(x)), None)
        if stem is None or image_path.name.startswith(".") or not image_path.is_file():
            continue
        match = _NNUNET_CHANNEL.match(stem)
        case, channel = (match.group("case"), int(match.group("channel"))) if match else (stem, -1)
        if (channels == 1 and channel > 0
                and not any((image_folder / f"{case}_0000{suffix}").is_file() for suffix in suffixes)):
            case, channel = stem, -1  # one channel: "scan_0007" without a "scan_0000" is a case of its own
        entry = files.setdefault(case, {})
        if channel in entry:
            raise ValueError(f"{image_path}: case {case!r} appears twice in {image_folder}")
        entry[channel] = image_path
    cases: dict[str, tuple[CaseImages, Path | None]] = {}
    ending = file_ending or ".nii.gz"
    for case, entry in files.items():
        if -1 in entry and len(entry) > 1:
            raise ValueError(f"{entry[-1]}: case {case!r} has both this file and channel files {entry[min(entry)].name}")
        numbered = sorted(c for c in entry if c >= 0)
        if numbered and numbered[-1] >= channels:
            what = "one channel per case" if channels == 1 else f"{channels} channels (data.channels)"
            raise ValueError(f"{entry[numbered[-1]]}: extra input channel; the data set is read with {what}")
        if -1 in entry:
            images: CaseImages = entry[-1]
        elif channels == 1:
            images = entry[0] if 0 in entry else entry[numbered[0]]
        else:
            missing = [c for c in range(channels) if c not in entry]
            if missing:
                raise ValueError(f"case {case!r}: channel file {image_folder / f'{case}_{missing[0]:04d}{ending}'} "
                                 f"not found ({channels} channels, _0000 ... _{channels - 1:04d}, expected)")
            images = tuple(entry[c] for c in range(channels))
        label_path = None
        if has_labels:
            first = images if isinstance(images, Path) else images[0]
            stem = next(first.name[: -len(x)] for x in suffixes if first.name.endswith(x))
            candidates = [label_folder / f"{name}{suffix}" for name in dict.fromkeys((stem, case)) for suffix in suffixes]
            label_path = next((c for c in candidates if c.is_file()), None)
            if label_path is None:
                raise ValueError(f"{first}: no label for case {case!r} (expected {candidates[-1].parent / (case + ending)})")
        cases[case] = (images, label_path)
    if not cases:
        raise ValueError(f"{image_folder}: no {' or '.join(suffixes)} images found")
    return [(case, image, label) for case, (image, label) in sorted(cases.items())]


# --------------------------------------------------------------------------------------------------
# dataset.json (MSD and nnU-Net v2)
# --------------------------------------------------------------------------------------------------
DATASET_JSON = "dataset.json"


@dataclass
class DatasetJson:
    """What a ``dataset.json`` says about a data set.

    Attributes:
        path: the file.
        class_names: the names of classes 0..C-1, background first (index = label value).
        channels: the input channel names in order (``"0"``, ``"1"``, ... keys).
        file_ending: e.g. ``".nii.gz"`` (nnU-Net v2's ``file_ending``; MSD: ``".nii.gz"``).
        num_training: ``numTraining`` when given.
    """

    path: Path
    class_names: list[str]
    channels: list[str]
    file_ending: str = ".nii.gz"
    num_training: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _ordered_channels(mapping: Any, path: Path, field_name: str) -> list[str]:
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f'{path}: "{field_name}" must map channel numbers to names, e.g. {{"0": "T2"}}; '
                         f"got {mapping!r}")
    try:
        keys = sorted(mapping, key=int)
    except (TypeError, ValueError):
        raise ValueError(f'{path}: "{field_name}" keys must be channel numbers "0", "1", ...; '
                         f"got {sorted(map(str, mapping))}") from None
    if [int(k) for k in keys] != list(range(len(keys))):
        raise ValueError(f'{path}: "{field_name}" keys must be 0..{len(keys) - 1}, got {keys}')
    return [str(mapping[k]) for k in keys]


def read_dataset_json(path: str | os.PathLike) -> DatasetJson:
    """Parse a ``dataset.json`` in either form.

    MSD: ``"labels": {"0": "background", "1": "tumour"}``, ``"modality": {"0": "MRI"}``,
    ``"training": [{"image": ..., "label": ...}]``, ``"numTraining"``. nnU-Net v2: ``"labels":
    {"background": 0, "tumour": 1}``, ``"channel_names": {"0": "T2"}``, ``"file_ending":
    ".nii.gz"``, ``"numTraining"``. Label values must be 0..C-1 (0 = background); nnU-Net's region
    labels (lists of values) are not supported.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file and the field: not JSON, a field missing or malformed.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset.json not found")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: the top level must be an object, got {type(document).__name__}")
    labels = document.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f'{path}: "labels" must be an object of class names and values, '
                         f'e.g. {{"background": 0, "tumour": 1}}; got {labels!r}')
    by_value: dict[int, str] = {}
    for key, value in labels.items():
        # MSD: {"0": "background"}; nnU-Net v2: {"background": 0}.
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise ValueError(f'{path}: "labels" entry {key!r}: {value!r} is not a class value '
                             "(region labels are not supported)")
        if isinstance(value, int):
            number, name = value, str(key)
        else:
            try:
                number, name = int(key), str(value)
            except ValueError:
                raise ValueError(f'{path}: "labels" entry {key!r}: {value!r}: expected "name": value '
                                 '(nnU-Net v2) or "value": "name" (MSD)') from None
        if number in by_value:
            raise ValueError(f'{path}: "labels" gives the value {number} twice')
        by_value[number] = name
    if sorted(by_value) != list(range(len(by_value))) or len(by_value) < 2:
        raise ValueError(f'{path}: "labels" values must be 0..C-1 with C >= 2 (0 = background), got {sorted(by_value)}')
    if "channel_names" in document:
        channels = _ordered_channels(document["channel_names"], path, "channel_names")
    elif "modality" in document:
        channels = _ordered_channels(document["modality"], path, "modality")
    else:
        raise ValueError(f'{path}: missing "channel_names" (nnU-Net v2) or "modality" (MSD), '
                         'e.g. {"0": "CT"}')
    ending = document.get("file_ending", ".nii.gz")
    if ending not in NIFTI_SUFFIXES:
        raise ValueError(f'{path}: "file_ending" must be one of {", ".join(NIFTI_SUFFIXES)}, got {ending!r}')
    num_training = document.get("numTraining")
    if num_training is not None and (isinstance(num_training, bool) or not isinstance(num_training, int)
                                     or num_training < 0):
        raise ValueError(f'{path}: "numTraining" must be a whole number >= 0, got {num_training!r}')
    return DatasetJson(path=path, class_names=[by_value[i] for i in range(len(by_value))], channels=channels,
                       file_ending=ending, num_training=num_training)


def _as_case(case: Sequence[Any]) -> tuple[str, CaseImages, Path | None]:
    if len(case) != 3:
        raise ValueError(f"a case must be (case, image_path, label_path), got {case!r}")
    name, image, label = case
    images = Path(image) if isinstance(image, (str, os.PathLike)) else tuple(Path(p) for p in image)
    return str(name), images, None if label is None else Path(label)


class NiftiVolumeDataset(Dataset):
    """NIfTI cases as `Volume` objects, read one per item (see `read_nifti_volume`).

    Args:
        cases: (case, image path(s), label_path or None) triples, e.g. from `find_nifti_cases`.
        num_classes: C, background included; labels are checked against it.
        modality: ``"ct"``, ``"mr"`` or ``"zscore"`` intensity normalisation (of every channel
            unless ``normalization`` is given in `read_options`).
        axis: the (reoriented) axis that becomes S.
        ct_window: HU window for CT.
        mr_percentiles: percentile window for MR.
        **read_options: `read_nifti_volume`'s keyword-only options (orientation, target_spacing,
            normalization, channels).
    """

    def __init__(
        self,
        cases: Sequence[tuple[str, Any, str | Path | None]],
        num_classes: int,
        modality: str = "ct",
        axis: int = 2,
        ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
        mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES,
        **read_options: Any,
    ) -> None:
        self.cases = [_as_case(case) for case in cases]
        if not self.cases:
            raise ValueError("NiftiVolumeDataset needs at least one case")
        self.names: list[str] = [case for case, _, _ in self.cases]
        self.num_classes = int(num_classes)
        self.modality = modality
        self.axis = axis
        self.ct_window = ct_window
        self.mr_percentiles = mr_percentiles
        self.read_options = read_options

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Volume:
        case, image_path, label_path = self.cases[index]
        return read_nifti_volume(
            image_path,
            label_path,
            modality=self.modality,
            axis=self.axis,
            ct_window=self.ct_window,
            mr_percentiles=self.mr_percentiles,
            num_classes=self.num_classes,
            case=case,
            **self.read_options,
        )


class NiftiSliceDataset(Dataset):
    """Training slices of labelled NIfTI cases, all volumes held in memory after one read.

    Items are ``(image float32 (H, W) or (C, H, W), label int64 (H, W))`` like
    `SynapseSliceDataset` (or ``transform(image, label)``); ``names[i]`` is ``"<case>_sliceNNN"``.
    Every case must be labelled and all slices of one case share (H, W); cases may differ in size
    (batch with a resizing transform). For sets too large for memory, write them as Synapse npz slices.

    Args:
        cases: (case, image path(s), label_path) triples, e.g. from `find_nifti_cases`.
        num_classes: C, background included; labels are checked against it.
        modality: ``"ct"``, ``"mr"`` or ``"zscore"`` intensity normalisation.
        axis: the (reoriented) axis that becomes S.
        ct_window: HU window for CT.
        mr_percentiles: percentile window for MR.
        skip_empty: drop slices whose label is all background.
        transform: optional callable applied to each ``(image, label)`` pair.
        context_slices: k > 0 gives each slice's image with its k neighbours on each side as
            channels, (C * (2k + 1), H, W) (`stack_context_slices`).
        **read_options: `read_nifti_volume`'s keyword-only options (orientation, target_spacing,
            normalization, channels).
    """

    def __init__(
        self,
        cases: Sequence[tuple[str, Any, str | Path | None]],
        num_classes: int,
        modality: str = "ct",
        axis: int = 2,
        ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
        mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES,
        skip_empty: bool = False,
        transform: SliceTransform | None = None,
        context_slices: int = 0,
        **read_options: Any,
    ) -> None:
        self.num_classes = int(num_classes)
        self.transform = transform
        self.context_slices = int(context_slices)
        self.volumes: list[Volume] = []
        self.index: list[tuple[int, int]] = []  # (volume, slice) per item
        self.names: list[str] = []
        for case, image_path, label_path in (_as_case(c) for c in cases):
            if label_path is None:
                raise ValueError(f"{image_path}: case {case!r} has no label; training slices need labels")
            volume = read_nifti_volume(
                image_path,
                label_path,
                modality=modality,
                axis=axis,
                ct_window=ct_window,
                mr_percentiles=mr_percentiles,
                num_classes=self.num_classes,
                case=case,
                **read_options,
            )
            assert volume.label is not None
            if volume.geometry is not None:
                volume.geometry.native_label = None  # training uses the working grid only
            keep = volume.label.reshape(volume.label.shape[0], -1).any(axis=1) if skip_empty else None
            for z in range(volume.image.shape[0]):
                if keep is None or keep[z]:
                    self.index.append((len(self.volumes), z))
                    self.names.append(f"{case}_slice{z:03d}")
            self.volumes.append(volume)
        if not self.index:
            raise ValueError(
                "NiftiSliceDataset has no slices (no cases given, or every slice empty with skip_empty)"
            )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Any:
        volume_index, z = self.index[index]
        volume = self.volumes[volume_index]
        assert volume.label is not None
        if self.context_slices:
            slices = volume.image if volume.image.ndim == 4 else volume.image[:, None]  # (S, C, H, W)
            image = stack_context_slices(slices, self.context_slices, at=[z])[0]
        else:
            image = volume.image[z].copy()
        label = volume.label[z].copy()
        return self.transform(image, label) if self.transform is not None else (image, label)


# ------------------------------------------------------------------------------------ augmented slices
class AugmentedSlices(Dataset):
    """A slice data set with its transform: item i -> (image float32 (C, h, w), labels int64 (h, w)).

    With `seed` set (training) every item reseeds the transform from (seed, epoch, i), so the same
    (epoch, i) always gives the same tensors in any process, DataLoader worker or resumed run.
    The sources check every label against num_classes when they read it (naming the file), so a
    bad label never reaches the loss.

    Args:
        source: a slice data set returning (image float32 (H, W), labels int64 (H, W)), e.g.
            `SynapseSliceDataset` or `NiftiSliceDataset`.
        transform: the per-slice pipeline.
        seed: the run's seed for per-sample reseeding; None for a deterministic transform.
    """

    def __init__(self, source: Dataset, transform: SlicePipeline, seed: int | None = None,
                 skip_unreadable: bool = False) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        # data.on_bad_sample=skip: a slice that became unreadable after the up-front check is
        # replaced by the next readable one instead of stopping the run.
        self.skip_unreadable = skip_unreadable

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the augmentation seeds are drawn for (the loop calls it every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, index: int) -> tuple[int, Any]:
        """(item index, source item) of `index`, or of the next readable item under `skip_unreadable`."""
        for step in range(len(self) if self.skip_unreadable else 1):
            candidate = (index + step) % len(self)
            try:
                return candidate, self.source[candidate]
            except (OSError, ValueError) as exc:
                if not self.skip_unreadable:
                    raise
                logger.warning("data.on_bad_sample=skip: %s; using the next slice instead", _one_line(exc))
        raise ValueError(f"no readable slice left among the {len(self)} training slices")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index, (image, labels) = self._read(index)
        if self.seed is not None:
            self.transform.set_seed(sample_seed(self.seed, self.epoch, index))
        return self.transform(image, labels)


# ------------------------------------------------------------------------------------ up-front checks
def npz_array_headers(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the arrays of an ``.npz`` archive, from the .npy headers only.

    Reads a few bytes per member (no array data is decompressed beyond its header), so a
    training folder of thousands of slices is checked in seconds.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file when it is not a zip of .npy arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: slice file not found")
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    if version in ((1, 0), (2, 0)):
                        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)
                        shape, _fortran, dtype = read_header(stream)
                    else:  # format 3.0 (utf-8 field names) has no public header reader: read the array
                        array = np.lib.format.read_array(stream, allow_pickle=False)
                        shape, dtype = array.shape, array.dtype
                headers[member[: -len(".npy")]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable .npz file with numeric arrays ({_one_line(exc)})") from exc
    return headers


def check_slice_header(path: str | os.PathLike) -> None:
    """A Synapse training slice's header: 'image' and 'label' arrays of one 2D shape, numeric.

    Raises:
        FileNotFoundError / ValueError: one line naming the file and what is wrong.
    """
    headers = npz_array_headers(path)
    missing = [key for key in ("image", "label") if key not in headers]
    if missing:
        raise ValueError(f"{path}: missing key {missing[0]!r} (expected 'image' and 'label', found {sorted(headers)})")
    (image_shape, image_dtype), (label_shape, label_dtype) = headers["image"], headers["label"]
    if len(image_shape) != 2 or label_shape != image_shape:
        raise ValueError(
            f"{path}: expected 2D 'image' and 'label' of one shape (H, W), got {image_shape} and {label_shape}"
        )
    for key, dtype in (("image", image_dtype), ("label", label_dtype)):
        if dtype.kind not in "biuf":
            raise ValueError(f"{path}: {key!r} has dtype {dtype}, expected numbers")


def check_nifti_header(image_path: Any, label_path: str | os.PathLike | None, channels: int = 1) -> None:
    """A NIfTI case's headers: every file reads as NIfTI, 3D (trailing 1s allowed; a single file may
    be 4D with `channels` channels), one grid shape.

    Args:
        image_path: one file, or the channel files of the case.
        label_path: the label file or None.
        channels: C, the input channels expected.

    Raises:
        FileNotFoundError / ValueError: one line naming the file and what is wrong.
    """
    paths = [Path(image_path)] if isinstance(image_path, (str, os.PathLike)) else [Path(p) for p in image_path]
    image_path = paths[0]
    shape = _load_nifti(image_path).shape
    if len(paths) == 1 and channels > 1:
        while len(shape) > 4 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 4 or shape[3] != channels:
            raise ValueError(f"{image_path}: expected a 4D volume (X, Y, Z, {channels}) of {channels} channels "
                             f"(or {channels} files _0000 ...), got shape {shape}")
        shape = shape[:3]
    image_shape = _as_3d_shape(shape, image_path)
    for path in paths[1:]:
        other = _as_3d_shape(_load_nifti(path).shape, path)
        if other != image_shape:
            raise ValueError(f"{path}: channel shape {other} differs from {image_path} shape {image_shape}")
    if label_path is not None:
        label_path = Path(label_path)
        label_shape = _as_3d_shape(_load_nifti(label_path).shape, label_path)
        if label_shape != image_shape:
            raise ValueError(f"{label_path}: label shape {label_shape} differs from image {image_path} shape {image_shape}")


def _as_3d_shape(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {shape} (one channel per file is supported)")
    return tuple(shape)
