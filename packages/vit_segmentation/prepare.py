"""The MRI-lobe demo data: a real T1 brain MRI and its hand-drawn atlas, written in the Synapse layout.

Source: the Debian package ``mricron-data`` (``apt-get install -y mricron-data``), which installs
into ``/usr/share/mricron/templates/``:

- ``ch2.nii.gz``: a real T1-weighted MRI (the "Colin 27" single-subject average), 181×217×181, 1 mm;
- ``aal.nii.gz``: the AAL atlas, 116 hand-drawn regions on the same grid;
- ``aal.nii.txt``: lines ``index name code``; the thousands digit of ``code`` is the region's lobe.

Classes: background 0 (white matter, CSF and everything outside the 116 regions) and the eight
lobe digits 2..9 mapped to classes 1..8 (`LOBES` lists them with the regions that identify
them; `prepare_mri_lobes` checks each digit holds those regions). Nine classes, as many as Synapse.

The split (there is one brain, so the two cases are its two hemispheres): the volume is cut at
the mid-sagittal plane, the x index where the affine puts x = 0 mm (index 90 for ch2). The
voxels with a lower x index (the left hemisphere in RAS) are ``case0001``, the training case,
written as axial slices ``train_npz/case0001_sliceNNN.npz``, one per axial slice that holds any
labelled voxel; the voxels with a higher x index (right hemisphere) are ``case0002``, the test
case, written as the volume ``test_vol_h5/case0002.npy.h5``. The midline column itself is
dropped, so the two cases share no voxel. Both hemispheres are also written as NIfTI
(``imagesTr/``, ``labelsTr/``, raw uint8 intensities, each with its own correct affine), so the
NIfTI loaders read the same cases.

Arrays in the Synapse files are what ``read_nifti_volume(..., modality="mr", axis=2)`` returns for
the NIfTI copy: (Z, X, Y) = (181, 90, 217) volumes, slices of 90×217, intensities clipped to the
0.5th..99.5th percentile of the case's nonzero voxels and scaled to [0, 1].

The output folder is written in a temporary sibling folder and renamed into place at the end, so
an interrupted run leaves no half-written data set and can simply be run again.

Usage: ``python -m vit_segmentation.prepare OUTPUT_DIR [--templates DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np

from .data import DEFAULT_MR_PERCENTILES, normalize_mr

__all__ = [
    "DEBIAN_MRICRON_TEMPLATES",
    "LOBES",
    "TEST_CASE",
    "TRAIN_CASE",
    "lobe_label_map",
    "prepare_mri_lobes",
    "read_aal_table",
]

# The one place the Debian package `mricron-data` is named: where it installs its templates.
DEBIAN_MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
INSTALL_HINT = "install them with `apt-get install -y mricron-data`, or pass templates_dir"

# AAL lobe digit (thousands digit of the region code) -> (class name, regions the digit must hold).
# The names follow the regions each digit groups in aal.nii.txt; the check catches a different table.
LOBES: dict[int, tuple[str, tuple[str, ...]]] = {
    2: ("frontal", ("Precentral", "Frontal_Sup", "Supp_Motor_Area", "Rectus")),
    3: ("insula", ("Insula",)),
    4: ("limbic", ("Cingulum_Ant", "Hippocampus", "Amygdala")),
    5: ("occipital", ("Calcarine", "Cuneus", "Occipital_Sup", "Fusiform")),
    6: ("parietal", ("Postcentral", "Parietal_Sup", "Precuneus", "Angular")),
    7: ("subcortical", ("Caudate", "Putamen", "Pallidum", "Thalamus")),
    8: ("temporal", ("Heschl", "Temporal_Sup", "Temporal_Inf")),
    9: ("cerebellum", ("Cerebelum_Crus1", "Vermis_4_5")),
}
TRAIN_CASE = "case0001"
TEST_CASE = "case0002"
MARKER = "prepared.json"  # written last; its presence marks a folder this function may replace


def read_aal_table(path: str | os.PathLike) -> dict[int, tuple[str, int]]:
    """``aal.nii.txt`` as ``{index: (name, code)}`` (lines ``index name code``; CRLF, blank lines ok)."""
    path = Path(path)
    table: dict[int, tuple[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[0].isdigit() or not fields[2].isdigit():
            raise ValueError(f"{path}:{number}: expected 'index name code', got {line.strip()!r}")
        table[int(fields[0])] = (fields[1], int(fields[2]))
    if not table:
        raise ValueError(f"{path}: no regions found (expected lines 'index name code')")
    return table


def lobe_label_map(table: dict[int, tuple[str, int]], where: str) -> tuple[np.ndarray, dict[int, list[str]]]:
    """The atlas-index -> class lookup table and the region names of each class.

    Args:
        table: `read_aal_table`'s result.
        where: the table file, for messages.

    Returns:
        ``(lookup, regions)``: int64 (max_index + 1,) with lookup[index] = class (0 for index 0),
        and class -> sorted region names.
    """
    digit_to_class = {digit: k for k, digit in enumerate(sorted(LOBES), start=1)}
    lookup = np.zeros(max(table) + 1, dtype=np.int64)
    regions: dict[int, list[str]] = {k: [] for k in digit_to_class.values()}
    for index, (name, code) in table.items():
        digit = code // 1000
        if digit not in digit_to_class:
            raise ValueError(
                f"{where}: region {index} {name} has code {code}, whose lobe digit {digit} is not 2..9"
            )
        lookup[index] = digit_to_class[digit]
        regions[digit_to_class[digit]].append(name)
    for digit, (lobe, expected) in LOBES.items():
        names = regions[digit_to_class[digit]]
        missing = [e for e in expected if not any(n.startswith(e) for n in names)]
        if missing:
            raise ValueError(
                f"{where}: lobe digit {digit} ({lobe}) should hold regions {missing}, has {sorted(names)}"
            )
    return lookup, {k: sorted(v) for k, v in regions.items()}


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {INSTALL_HINT}")
    return nib.load(str(path))


def _shifted_affine(affine: np.ndarray, x_offset: int) -> np.ndarray:
    """The affine of the sub-volume that starts at voxel index ``x_offset`` along the first axis."""
    shift = np.eye(4)
    shift[0, 3] = x_offset
    return affine @ shift


def _write_case_nifti(
    root: Path, case: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray
) -> None:
    for folder, data in (("imagesTr", image), ("labelsTr", label)):
        nifti = nib.Nifti1Image(np.asfortranarray(data), affine)
        nifti.header.set_xyzt_units("mm")
        nib.save(nifti, str(root / folder / f"{case}.nii.gz"))


def _readme(summary: dict[str, Any], regions: dict[int, list[str]], templates: Path) -> str:
    names = summary["class_names"]
    lines = [
        "# MRI lobes: a 9-class demo set in TransUNet's Synapse layout",
        "",
        f"Written by `vit_segmentation.prepare.prepare_mri_lobes` from `{templates}`",
        "(Debian `mricron-data`): the T1 MRI `ch2.nii.gz` and the AAL atlas `aal.nii.gz`",
        "(181x217x181, 1 mm), lobes from `aal.nii.txt`.",
        "",
        "## Classes (`classes.txt`)",
        "",
        "| class | name | AAL regions |",
        "|---|---|---|",
        "| 0 | background | white matter, CSF, outside the atlas |",
    ]
    for k in range(1, len(names)):
        lines.append(f"| {k} | {names[k]} | {', '.join(regions[k])} |")
    mid = summary["midline_index"]
    lines += [
        "",
        "## Split",
        "",
        f"The brain is cut at the mid-sagittal plane, x index {mid} (x = 0 mm).",
        f"`{TRAIN_CASE}` = x index < {mid} ({summary['train_hemisphere']} hemisphere), the training case;",
        f"`{TEST_CASE}` = x index > {mid} ({summary['test_hemisphere']} hemisphere), the test case.",
        "The midline column is dropped: the cases share no voxel. Both come from one subject,",
        "so this is a demo of the pipeline, not a benchmark.",
        "",
        "## Files",
        "",
        f"- `train_npz/{TRAIN_CASE}_sliceNNN.npz`: {summary['train_slices']} axial slices (those with any",
        "  labelled voxel), keys `image` (float32, in [0, 1]) and `label` (uint8), each "
        f"{summary['slice_shape'][0]}x{summary['slice_shape'][1]}.",
        f"- `test_vol_h5/{TEST_CASE}.npy.h5`: datasets `image` (float32) and `label` (uint8),",
        f"  (Z, H, W) = {tuple(summary['volume_shape'])}, attribute `spacing` (mm along Z, H, W).",
        "- `imagesTr/caseXXXX.nii.gz`, `labelsTr/caseXXXX.nii.gz`: both cases as NIfTI, raw uint8",
        "  intensities, each with its own affine",
        '  (read them with `read_nifti_volume(..., modality="mr", axis=2)`).',
        "- `lists/train.txt` (slice names), `lists/test_vol.txt` (test case), `lists/all.lst` (both cases).",
        "- `classes.txt`: one name a line, line k = class k, background first.",
        "- `prepared.json`: this summary.",
        "",
        "Synapse arrays are (Z, X, Y) of the source grid: what the NIfTI loader returns with `axis=2`.",
        "MR intensities are clipped to the 0.5th..99.5th percentile of each case's nonzero voxels and",
        "scaled to [0, 1].",
        "",
    ]
    return "\n".join(lines)


def _clear_leftovers(parent: Path, name: str) -> None:
    """Remove the temporary folders an interrupted earlier run of this function left beside the output."""
    for prefix in (f".{name}.partial-", f".{name}.old-"):
        for leftover in parent.glob(f"{prefix}*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)


def prepare_mri_lobes(output_dir: str | Path, templates_dir: str | Path | None = None) -> dict[str, Any]:
    """Write the MRI-lobe demo set (9 classes, two hemisphere cases) in the Synapse and NIfTI layouts.

    See the module docstring for the classes, the split and the files. An existing ``output_dir``
    is replaced only when an earlier run of this function wrote it (it holds ``prepared.json``).

    Args:
        output_dir: the data set folder to write (``train_npz/``, ``test_vol_h5/``, ``lists/``,
            ``imagesTr/``, ``labelsTr/``, ``classes.txt``, ``README.md``, ``prepared.json``).
        templates_dir: the folder with ``ch2.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt``; default
            ``/usr/share/mricron/templates`` (Debian ``mricron-data``).

    Returns:
        The summary also written to ``prepared.json``: class names, case ids, hemispheres, the
        midline index, train slice count, slice and volume shapes, voxels per class per case.

    Raises:
        FileNotFoundError: the templates are missing (the message gives the apt-get command).
        ValueError: the atlas and the MRI grids differ, the region table is not the AAL lobe
            table, or ``output_dir`` is a non-empty folder this function did not write.
    """
    templates = Path(templates_dir) if templates_dir is not None else DEBIAN_MRICRON_TEMPLATES
    if not templates.is_dir():
        raise FileNotFoundError(f"{templates}: MRIcron templates folder not found; {INSTALL_HINT}")
    mri_path, atlas_path, table_path = (
        templates / "ch2.nii.gz",
        templates / "aal.nii.gz",
        templates / "aal.nii.txt",
    )
    mri, atlas = _load(mri_path), _load(atlas_path)
    if not table_path.is_file():
        raise FileNotFoundError(f"{table_path}: not found; {INSTALL_HINT}")
    if mri.shape != atlas.shape or not np.allclose(mri.affine, atlas.affine, atol=1e-3):
        raise ValueError(
            f"{atlas_path}: atlas grid {atlas.shape} / affine {atlas.affine.tolist()} differs from "
            f"{mri_path} grid {mri.shape} / affine {mri.affine.tolist()}"
        )
    if len(mri.shape) != 3:
        raise ValueError(f"{mri_path}: expected a 3D volume, got shape {mri.shape}")
    affine = np.asarray(mri.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))) or affine[0, 0] == 0:
        raise ValueError(
            f"{mri_path}: expected an axis-aligned affine (x along the first axis), got {affine.tolist()}"
        )

    lookup, regions = lobe_label_map(read_aal_table(table_path), str(table_path))
    class_names = ["background", *(LOBES[d][0] for d in sorted(LOBES))]
    image = np.asarray(mri.dataobj)  # raw intensities (uint8 for ch2), kept for the NIfTI copies
    atlas_index = np.asarray(atlas.dataobj)
    if not np.issubdtype(atlas_index.dtype, np.integer):
        atlas_index = atlas_index.astype(np.int64)
    # Every nonzero atlas value must be a region of the table (lookup is 0 for the gaps between indices).
    unknown = [
        int(v) for v in np.unique(atlas_index) if v != 0 and not (0 < v < len(lookup) and lookup[v] > 0)
    ]
    if unknown:
        raise ValueError(f"{atlas_path}: atlas values {unknown[:5]} are not regions of {table_path}")
    label = lookup[atlas_index].astype(np.uint8)

    # Mid-sagittal plane: the x index where the affine puts x = 0 mm.
    midline = int(round(float(np.linalg.solve(affine, [0.0, 0.0, 0.0, 1.0])[0])))
    if not 0 < midline < image.shape[0] - 1:
        raise ValueError(f"{mri_path}: x = 0 mm falls at index {midline}, outside the volume {image.shape}")
    low_side = "left" if affine[0, 0] > 0 else "right"  # RAS: x grows to the right
    high_side = "right" if low_side == "left" else "left"
    halves = {
        TRAIN_CASE: (slice(0, midline), 0),
        TEST_CASE: (slice(midline + 1, image.shape[0]), midline + 1),
    }

    output_dir = Path(output_dir)
    parent = output_dir.resolve().parent
    if output_dir.exists() and not (output_dir / MARKER).is_file() and any(output_dir.iterdir()):
        raise ValueError(
            f"{output_dir}: exists and was not written by prepare_mri_lobes; choose an empty folder"
        )
    parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(parent, output_dir.name)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    try:
        for folder in ("train_npz", "test_vol_h5", "lists", "imagesTr", "labelsTr"):
            (work / folder).mkdir()
        summary: dict[str, Any] = {
            "num_classes": len(class_names),
            "class_names": class_names,
            "train_case": TRAIN_CASE,
            "test_case": TEST_CASE,
            "train_hemisphere": low_side,
            "test_hemisphere": high_side,
            "midline_index": midline,
            "voxels_per_class": {},
        }
        train_names: list[str] = []
        for case, (x_range, x_offset) in halves.items():
            raw_half = image[x_range]
            label_half = label[x_range]
            _write_case_nifti(work, case, raw_half, label_half, _shifted_affine(affine, x_offset))
            # The Synapse copy: exactly what read_nifti_volume(modality="mr", axis=2) makes of the NIfTI copy.
            normalised = np.ascontiguousarray(
                np.moveaxis(normalize_mr(raw_half, DEFAULT_MR_PERCENTILES), 2, 0)
            )
            label_zhw = np.ascontiguousarray(np.moveaxis(label_half, 2, 0))
            summary["voxels_per_class"][case] = np.bincount(
                label_zhw.ravel(), minlength=len(class_names)
            ).tolist()
            summary["volume_shape"] = list(normalised.shape)
            summary["slice_shape"] = list(normalised.shape[1:])
            if case == TRAIN_CASE:
                for z in np.flatnonzero(label_zhw.reshape(label_zhw.shape[0], -1).any(axis=1)):
                    name = f"{case}_slice{int(z):03d}"
                    np.savez_compressed(
                        work / "train_npz" / f"{name}.npz", image=normalised[z], label=label_zhw[z]
                    )
                    train_names.append(name)
            else:
                with h5py.File(work / "test_vol_h5" / f"{case}.npy.h5", "w") as handle:
                    handle.create_dataset("image", data=normalised, compression="gzip", compression_opts=4)
                    handle.create_dataset("label", data=label_zhw, compression="gzip", compression_opts=4)
                    zooms = [float(z) for z in mri.header.get_zooms()[:3]]
                    handle.attrs["spacing"] = np.asarray([zooms[2], zooms[0], zooms[1]], dtype=np.float64)
        summary["train_slices"] = len(train_names)
        _write_lines(work / "lists" / "train.txt", train_names)
        _write_lines(work / "lists" / "test_vol.txt", [TEST_CASE])
        _write_lines(work / "lists" / "all.lst", [f"{case}.npy.h5" for case in halves])
        # One name a line, line k = class k (background first): what the segmentation task reads.
        _write_lines(work / "classes.txt", class_names)
        (work / "README.md").write_text(_readme(summary, regions, templates), encoding="utf-8")
        (work / MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

        # Swap into place: the old folder (if any) moves aside first, so a crash leaves one of the two whole.
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=parent))
            output_dir.rename(old / "data")
            work.rename(output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(output_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    summary["output_dir"] = str(output_dir)
    return summary


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m vit_segmentation.prepare OUTPUT_DIR [--templates DIR]``: write, print the summary."""
    parser = argparse.ArgumentParser(description="Write the MRI-lobe demo set (Synapse + NIfTI layouts).")
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--templates", type=Path, default=None, help=f"default {DEBIAN_MRICRON_TEMPLATES}")
    args = parser.parse_args(argv)
    summary = prepare_mri_lobes(args.output_dir, args.templates)
    print(json.dumps({k: v for k, v in summary.items() if k != "voxels_per_class"}, indent=2))


if __name__ == "__main__":
    main()
