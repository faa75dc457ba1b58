"""Medical segmentation data in the layouts users bring: Synapse as TransUNet distributes it, and NIfTI.

Axis convention, everywhere in this package: a volume is an (S, H, W) array. S is the slicing
axis (the 2D model sees one H×W slice at a time); for Synapse S is the axial axis Z. Spacing is
given in mm along (S, H, W).

Synapse (TransUNet's preprocessed copy, ``datasets/README.md`` of Beckschen/TransUNet)::

    root/train_npz/caseXXXX_sliceNNN.npz   keys "image" (float, H×W, already in [0, 1]) and "label" (H×W)
    root/test_vol_h5/caseXXXX.npy.h5       HDF5 datasets "image" and "label", (Z, H, W)
    root/lists/train.txt, test_vol.txt     one name per line, no extension (TransUNet keeps them in
                                           lists/lists_Synapse/; pass ``list_dir`` for that)

NIfTI (Medical Segmentation Decathlon / nnU-Net layout)::

    root/imagesTr/<case>.nii.gz            (nnU-Net's single-channel <case>_0000.nii.gz works too)
    root/labelsTr/<case>.nii.gz            same grid and affine as the image

NIfTI volumes keep their stored voxel order (no reorientation, no resampling): ``axis`` picks
the source array axis that becomes S, the other two keep their order as (H, W), and
`write_nifti_labels` undoes exactly that, so predictions overlay the source image in any viewer.
Intensities: CT is clipped to a HU window and scaled to [0, 1] (TransUNet: [-125, 275]); MR is
clipped to percentiles of its nonzero voxels and scaled to [0, 1].

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
    "Volume",
    "case_name",
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
class Volume:
    """One 3D case, ready for slice-by-slice inference and volume metrics.

    Attributes:
        case: case id, e.g. ``"case0002"``.
        image: float32 (S, H, W), intensity-normalised (values in [0, 1] for CT and MR).
        label: int64 (S, H, W) with values in [0, num_classes), or None for an unlabelled case.
        spacing: voxel size in mm along (S, H, W); (1, 1, 1) when the source does not say.
        affine: the 4×4 voxel-to-world affine of the source NIfTI (source axis order); None for Synapse h5.
        axis: the source array axis that became S (`write_nifti_labels` moves it back); 0 for Synapse.
        source: the file the image was read from, for messages (None when built in memory).
    """

    case: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    axis: int
    source: Path | None = None


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


def _normalize(
    image: np.ndarray, modality: str, ct_window: tuple[float, float], mr_percentiles: tuple[float, float]
) -> np.ndarray:
    if modality == "ct":
        return normalize_ct(image, ct_window)
    if modality == "mr":
        return normalize_mr(image, mr_percentiles)
    raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")


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
    """

    def __init__(
        self,
        root: str | Path,
        list_file: str = "train.txt",
        num_classes: int = 9,
        list_dir: str | Path | None = None,
        transform: SliceTransform | None = None,
    ) -> None:
        self.root = Path(root)
        self.num_classes = int(num_classes)
        self.transform = transform
        list_path = _list_path(self.root, list_dir, list_file)
        self.names: list[str] = read_list(list_path)
        self.paths: list[Path] = [self.root / "train_npz" / f"{name}.npz" for name in self.names]
        _missing_files(self.paths, "slice", list_path)

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked ``(image float32 (H, W), label int64 (H, W))`` of one slice, no transform."""
        path = self.paths[index]
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


def _as_3d(data: np.ndarray, path: Path) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:  # NIfTI pads unused dimensions with 1
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(
            f"{path}: expected a 3D volume, got shape {data.shape} (one channel per file is supported)"
        )
    return data


def read_nifti_volume(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike | None = None,
    modality: Modality = "ct",
    axis: int = 2,
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
    mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES,
    num_classes: int | None = None,
    case: str | None = None,
) -> Volume:
    """Read one NIfTI image (and its label map) as an (S, H, W) `Volume`.

    Args:
        image_path: the image (``.nii`` or ``.nii.gz``), 3D (trailing singleton dimensions allowed).
        label_path: its label map on the same grid, or None.
        modality: ``"ct"``: clip HU to ``ct_window`` and scale to [0, 1]; ``"mr"``: clip to the
            ``mr_percentiles`` of the nonzero voxels and scale to [0, 1].
        axis: the stored array axis (0, 1 or 2) that becomes S, the slicing axis; 2 is axial for
            the usual RAS/LPS-ordered files. The other two axes keep their order as (H, W).
        ct_window: (low, high) in HU.
        mr_percentiles: (low, high) percentiles in [0, 100].
        num_classes: C: label values must be whole numbers in [0, C); None checks only >= 0.
        case: the case id; default the image file name without extension (and nnU-Net's ``_0000``).

    Returns:
        `Volume` with float32 image, int64 label (or None), spacing in mm along (S, H, W), the
        image's affine and ``axis``. Voxel order is kept as stored (no reorientation or resampling).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: unreadable file, not 3D, NaN/inf intensities, image and label grids that differ
            (shape, affine or spacing: both files named), or label values that are not class indices.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (the source axis to slice along), got {axis!r}")
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    image_path = Path(image_path)
    image_nii = _load_nifti(image_path)
    try:
        raw = np.asarray(image_nii.get_fdata(dtype=np.float32, caching="unchanged"))
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt voxel data
        raise ValueError(f"{image_path}: could not read the voxel data ({_one_line(exc)})") from exc
    raw = _as_3d(raw, image_path)
    _check_image(raw, str(image_path))
    zooms = tuple(float(z) for z in image_nii.header.get_zooms()[:3])

    label = None
    if label_path is not None:
        label_path = Path(label_path)
        label_nii = _load_nifti(label_path)
        try:
            label_raw = np.asanyarray(label_nii.dataobj)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{label_path}: could not read the voxel data ({_one_line(exc)})") from exc
        label_raw = _as_3d(label_raw, label_path)
        if label_raw.shape != raw.shape:
            raise ValueError(
                f"{label_path}: label shape {label_raw.shape} differs from image {image_path} "
                f"shape {raw.shape}"
            )
        label_zooms = tuple(float(z) for z in label_nii.header.get_zooms()[:3])
        if not np.allclose(label_zooms, zooms, rtol=1e-4, atol=1e-5):
            raise ValueError(
                f"{label_path}: label spacing {label_zooms} differs from image {image_path} spacing {zooms}"
            )
        # Tolerance: affines are stored as float32 (sform) or rebuilt from quaternions (qform).
        if not np.allclose(label_nii.affine, image_nii.affine, rtol=1e-4, atol=1e-3):
            raise ValueError(
                f"{label_path}: label affine differs from image {image_path} affine "
                f"({np.round(label_nii.affine, 4).tolist()} vs {np.round(image_nii.affine, 4).tolist()})"
            )
        label = check_label_values(label_raw, num_classes, str(label_path))
        label = np.ascontiguousarray(np.moveaxis(label, axis, 0))

    image = np.ascontiguousarray(np.moveaxis(_normalize(raw, modality, ct_window, mr_percentiles), axis, 0))
    others = [a for a in range(3) if a != axis]
    spacing = (zooms[axis], zooms[others[0]], zooms[others[1]])
    return Volume(
        case=case if case is not None else case_name(image_path),
        image=image,
        label=label,
        spacing=spacing,
        affine=np.asarray(image_nii.affine, dtype=np.float64),
        axis=axis,
        source=image_path,
    )


def write_nifti_labels(path: str | os.PathLike, labels: np.ndarray, volume: Volume) -> None:
    """Write an (S, H, W) label map as NIfTI on the grid of ``volume``'s source image.

    The S axis is moved back to ``volume.axis`` and the source affine reused, so the file
    overlays the source image voxel for voxel. When ``volume.source`` is a NIfTI file, the
    output header is built from its header (`nifti_label_header`): qform/sform matrices and
    codes, intent, description, units and pixdim are kept, so a viewer puts the labels in the
    same space (e.g. MNI, code 4) as the input. A volume without an affine (Synapse h5) gets a
    diagonal affine with its spacing. Stored as uint8 (int16 above 255).

    Args:
        path: the output file (``.nii.gz`` or ``.nii``); its folder is created.
        labels: integer (S, H, W), the shape of ``volume.image``.
        volume: the `Volume` the labels belong to.
    """
    labels = np.asarray(labels)
    if labels.shape != volume.image.shape:
        raise ValueError(
            f"{path}: labels shape {labels.shape} differs from case {volume.case!r} "
            f"image shape {volume.image.shape}"
        )
    labels = check_label_values(labels, None, f"{path} (case {volume.case!r})")
    if labels.size and labels.max() > np.iinfo(np.int16).max:
        raise ValueError(f"{path}: label values above {np.iinfo(np.int16).max} are not supported")
    dtype = np.uint8 if labels.size == 0 or labels.max() < 256 else np.int16
    data = np.moveaxis(labels.astype(dtype), 0, volume.axis)
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


def find_nifti_cases(
    root: str | os.PathLike, images_dir: str = "imagesTr", labels_dir: str = "labelsTr"
) -> list[tuple[str, Path, Path | None]]:
    """The (case, image, label) triples of an MSD / nnU-Net style folder, sorted by case.

    ``root/imagesTr/<case>.nii.gz`` pairs with ``root/labelsTr/<case>.nii.gz``; nnU-Net's
    ``<case>_0000.nii.gz`` pairs with ``<case>.nii.gz``. Hidden files (the ``._*`` AppleDouble
    files inside the MSD tarballs) are skipped. Without a ``labelsTr`` folder every label is None.

    Raises:
        FileNotFoundError: ``root/imagesTr`` is missing.
        ValueError: no images; a labels folder exists but lacks a case's label; more than one
            channel per case (nnU-Net ``_0001`` files: one channel per case is supported).
    """
    root = Path(root)
    image_folder = root / images_dir
    label_folder = root / labels_dir
    if not image_folder.is_dir():
        raise FileNotFoundError(
            f"{image_folder}: images folder not found (expected {images_dir}/*.nii.gz under {root})"
        )
    has_labels = label_folder.is_dir()
    cases: dict[str, tuple[Path, Path | None]] = {}
    for image_path in sorted(image_folder.iterdir()):
        stem = _strip_nifti_suffix(image_path.name)
        if stem is None or image_path.name.startswith(".") or not image_path.is_file():
            continue
        case = case_name(image_path)
        match = _NNUNET_CHANNEL.match(stem)
        if (
            match
            and match.group("channel") != "0000"
            and (image_folder / f"{match.group('case')}_0000.nii.gz").exists()
        ):
            raise ValueError(f"{image_path}: extra input channel; one channel per case is supported")
        if case in cases:
            raise ValueError(f"{image_path}: case {case!r} appears twice in {image_folder}")
        label_path = None
        if has_labels:
            candidates = [
                label_folder / f"{name}{suffix}"
                for name in dict.fromkeys((stem, case))
                for suffix in NIFTI_SUFFIXES
            ]
            label_path = next((c for c in candidates if c.is_file()), None)
            if label_path is None:
                raise ValueError(f"{image_path}: no label for case {case!r} (expected {candidates[0]})")
        cases[case] = (image_path, label_path)
    if not cases:
        raise ValueError(f"{image_folder}: no .nii or .nii.gz images found")
    return [(case, image, label) for case, (image, label) in sorted(cases.items())]


def _as_case(case: Sequence[Any]) -> tuple[str, Path, Path | None]:
    if len(case) != 3:
        raise ValueError(f"a case must be (case, image_path, label_path), got {case!r}")
    name, image, label = case
    return str(name), Path(image), None if label is None else Path(label)


class NiftiVolumeDataset(Dataset):
    """NIfTI cases as `Volume` objects, read one per item (see `read_nifti_volume`).

    Args:
        cases: (case, image_path, label_path or None) triples, e.g. from `find_nifti_cases`.
        num_classes: C, background included; labels are checked against it.
        modality: ``"ct"`` or ``"mr"`` intensity normalisation.
        axis: the source axis that becomes S.
        ct_window: HU window for CT.
        mr_percentiles: percentile window for MR.
    """

    def __init__(
        self,
        cases: Sequence[tuple[str, str | Path, str | Path | None]],
        num_classes: int,
        modality: Modality = "ct",
        axis: int = 2,
        ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
        mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES,
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
        )


class NiftiSliceDataset(Dataset):
    """Training slices of labelled NIfTI cases, all volumes held in memory after one read.

    Items are ``(image float32 (H, W), label int64 (H, W))`` like `SynapseSliceDataset` (or
    ``transform(image, label)``); ``names[i]`` is ``"<case>_sliceNNN"``. Every case must be
    labelled and all slices of one case share (H, W); cases may differ in size (batch with a
    resizing transform). For sets too large for memory, write them as Synapse npz slices.

    Args:
        cases: (case, image_path, label_path) triples, e.g. from `find_nifti_cases`.
        num_classes: C, background included; labels are checked against it.
        modality: ``"ct"`` or ``"mr"`` intensity normalisation.
        axis: the source axis that becomes S.
        ct_window: HU window for CT.
        mr_percentiles: percentile window for MR.
        skip_empty: drop slices whose label is all background.
        transform: optional callable applied to each ``(image, label)`` pair.
    """

    def __init__(
        self,
        cases: Sequence[tuple[str, str | Path, str | Path | None]],
        num_classes: int,
        modality: Modality = "ct",
        axis: int = 2,
        ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
        mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES,
        skip_empty: bool = False,
        transform: SliceTransform | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.transform = transform
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
            )
            assert volume.label is not None
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
        image, label = volume.image[z].copy(), volume.label[z].copy()
        return self.transform(image, label) if self.transform is not None else (image, label)


# ------------------------------------------------------------------------------------ augmented slices
class AugmentedSlices(Dataset):
    """A slice data set with its transform: item i -> (image float32 (1, h, w), labels int64 (h, w)).

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


def check_nifti_header(image_path: str | os.PathLike, label_path: str | os.PathLike | None) -> None:
    """A NIfTI case's headers: both files read as NIfTI, 3D (trailing 1s allowed), one grid shape.

    Raises:
        FileNotFoundError / ValueError: one line naming the file and what is wrong.
    """
    image_path = Path(image_path)
    image_shape = _as_3d_shape(_load_nifti(image_path).shape, image_path)
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
