"""Segmentation data: Synapse npz/h5 and NIfTI loaders, their errors, and the MRI-lobe demo set."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from vit_segmentation.data import (
    NiftiSliceDataset,
    NiftiVolumeDataset,
    SynapseSliceDataset,
    SynapseVolumeDataset,
    Volume,
    check_nifti_header,
    find_nifti_cases,
    normalize_mr,
    normalize_zscore,
    read_nifti_volume,
    stack_context_slices,
    write_nifti_labels,
)
from vit_segmentation.prepare import DEBIAN_MRICRON_TEMPLATES, prepare_mri_lobes

# --------------------------------------------------------------------------------------------------
# Synapse layout
# --------------------------------------------------------------------------------------------------


def _write_slice(root: Path, name: str, image: np.ndarray, label: np.ndarray, **extra: np.ndarray) -> Path:
    path = root / "train_npz" / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=image, label=label, **extra)
    return path


def _write_list(root: Path, name: str, lines: list[str]) -> Path:
    path = root / "lists" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _write_volume(root: Path, case: str, image: np.ndarray, label: np.ndarray | None, **attrs) -> Path:
    path = root / "test_vol_h5" / f"{case}.npy.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("image", data=image)
        if label is not None:
            handle.create_dataset("label", data=label)
        for key, value in attrs.items():
            handle.attrs[key] = value
    return path


def test_synapse_slices_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((12, 10)).astype(np.float64) for _ in range(2)]
    # Synapse ships float32 labels; they come back as int64.
    labels = [rng.integers(0, 9, (12, 10)).astype(np.float32) for _ in range(2)]
    for k in range(2):
        _write_slice(tmp_path, f"case0005_slice{k:03d}", images[k], labels[k])
    _write_list(tmp_path, "train.txt", ["case0005_slice000", "", "case0005_slice001"])

    data = SynapseSliceDataset(tmp_path)
    assert len(data) == 2 and data.names == ["case0005_slice000", "case0005_slice001"]
    for k in range(2):
        image, label = data[k]
        assert image.dtype == np.float32 and image.shape == (12, 10)
        assert label.dtype == np.int64
        np.testing.assert_array_equal(image, images[k].astype(np.float32))
        np.testing.assert_array_equal(label, labels[k].astype(np.int64))

    # TransUNet keeps its lists elsewhere (lists/lists_Synapse): list_dir, and a transform.
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "mine.txt").write_text("case0005_slice001\n")
    flipped = SynapseSliceDataset(
        tmp_path, "mine.txt", list_dir=other, transform=lambda i, m: (i[::-1], m.sum())
    )
    image, total = flipped[0]
    np.testing.assert_array_equal(image, images[1].astype(np.float32)[::-1])
    assert total == labels[1].sum()


def test_synapse_volumes_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((5, 8, 6)).astype(np.float32)
    label = rng.integers(0, 9, (5, 8, 6)).astype(np.uint8)
    _write_volume(tmp_path, "case0008", image, label)
    _write_volume(tmp_path, "case0022", image * 2, label, spacing=np.array([3.0, 0.7, 0.7]))
    _write_list(tmp_path, "test_vol.txt", ["case0008", "case0022"])

    data = SynapseVolumeDataset(tmp_path)
    first, second = data[0], data[1]
    assert isinstance(first, Volume) and first.case == "case0008"
    np.testing.assert_array_equal(first.image, image)
    np.testing.assert_array_equal(first.label, label.astype(np.int64))
    assert first.label.dtype == np.int64 and first.image.dtype == np.float32
    assert first.spacing == (1.0, 1.0, 1.0) and first.affine is None and first.axis == 0
    assert second.spacing == (3.0, 0.7, 0.7)

    # all.lst names end in .npy.h5 in TransUNet; they are stripped.
    _write_list(tmp_path, "all.lst", ["case0022.npy.h5"])
    assert SynapseVolumeDataset(tmp_path, "all.lst").names == ["case0022"]


def test_synapse_bad_inputs_name_the_file(tmp_path: Path) -> None:
    good = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(FileNotFoundError, match=r"lists/train.txt: list file not found"):
        SynapseSliceDataset(tmp_path)
    _write_list(tmp_path, "train.txt", ["s_missing"])
    with pytest.raises(
        FileNotFoundError, match=r"train_npz/s_missing.npz: slice named in .*train.txt not found"
    ):
        SynapseSliceDataset(tmp_path)

    cases = {
        "s_nokey": ({"image": good}, r"s_nokey.npz: missing key 'label'"),
        "s_shape": (
            {"image": good, "label": np.zeros((4, 5))},
            r"s_shape.npz: expected 2D 'image' and 'label'",
        ),
        "s_range": (
            {"image": good, "label": np.full((4, 4), 9)},
            r"s_range.npz: label values must be class indices "
            r"in \[0, 9\), got 9",
        ),
        "s_float": (
            {"image": good, "label": np.full((4, 4), 1.5)},
            r"s_float.npz: label values must be whole",
        ),
        "s_nan": (
            {"image": np.full((4, 4), np.nan), "label": np.zeros((4, 4))},
            r"s_nan.npz: image has 16 NaN",
        ),
        "s_pickle": (
            {"image": np.array([{"a": 1}], dtype=object), "label": np.zeros(1)},
            r"s_pickle.npz: not a readable .npz file",
        ),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / "train_npz" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        _write_list(tmp_path, "train.txt", [name])
        with pytest.raises(ValueError, match=message):
            SynapseSliceDataset(tmp_path)[0]
    (tmp_path / "train_npz" / "s_broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    _write_list(tmp_path, "train.txt", ["s_broken"])
    with pytest.raises(ValueError, match=r"s_broken.npz: not a readable .npz file"):
        SynapseSliceDataset(tmp_path)[0]

    volume = np.zeros((2, 3, 3), dtype=np.float32)
    _write_volume(tmp_path, "v_nolabel", volume, None)
    _write_volume(tmp_path, "v_2d", volume[0], volume[0])
    _write_volume(tmp_path, "v_range", volume, np.full((2, 3, 3), -1))
    _write_volume(tmp_path, "v_spacing", volume, volume, spacing=np.array([1.0, 0.0, 1.0]))
    (tmp_path / "test_vol_h5" / "v_text.npy.h5").write_text("not hdf5")
    expected = {
        "v_nolabel": r"v_nolabel.npy.h5: missing dataset 'label'",
        "v_2d": r"v_2d.npy.h5: 'image' must be a \(Z, H, W\) volume",
        "v_range": r"v_range.npy.h5: label values must be class indices in \[0, 9\), got -1",
        "v_spacing": r"v_spacing.npy.h5: 'spacing' must be 3 positive numbers",
        "v_text": r"v_text.npy.h5: not a readable HDF5 file",
    }
    for case, message in expected.items():
        _write_list(tmp_path, "test_vol.txt", [case])
        with pytest.raises(ValueError, match=message):
            SynapseVolumeDataset(tmp_path)[0]
    _write_list(tmp_path, "test_vol.txt", ["v_nolabel"])
    assert SynapseVolumeDataset(tmp_path, require_label=False)[0].label is None


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------

# A rotated, anisotropic, translated grid (not the identity, not diagonal).
_ANGLE = np.deg2rad(20.0)
AFFINE = np.array(
    [
        [0.8 * np.cos(_ANGLE), -0.9 * np.sin(_ANGLE), 0.0, -40.0],
        [0.8 * np.sin(_ANGLE), 0.9 * np.cos(_ANGLE), 0.0, 12.5],
        [0.0, 0.0, 2.5, -70.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _ct_case(root: Path, case: str = "liver_001") -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    hu = rng.uniform(-1000, 1000, (10, 12, 7)).astype(np.int16)
    hu[0, 0, :5] = [-1000, -125, 75, 275, 1000]
    label = rng.integers(0, 3, (10, 12, 7)).astype(np.uint8)
    image_path = _save(root / "imagesTr" / f"{case}.nii.gz", hu)
    label_path = _save(root / "labelsTr" / f"{case}.nii.gz", label)
    return image_path, label_path, hu, label


def test_nifti_ct_window_axis_and_spacing(tmp_path: Path) -> None:
    image_path, label_path, hu, label = _ct_case(tmp_path)
    volume = read_nifti_volume(image_path, label_path, modality="ct", axis=2, num_classes=3)
    assert volume.case == "liver_001" and volume.axis == 2
    assert volume.image.shape == (7, 10, 12) and volume.label.shape == (7, 10, 12)
    assert volume.image.dtype == np.float32 and volume.label.dtype == np.int64
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.9))
    np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-5)
    # TransUNet's window: [-125, 275] HU -> [0, 1], clipped outside.
    np.testing.assert_allclose(volume.image[:5, 0, 0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(volume.label, np.moveaxis(label, 2, 0))
    expected = (np.clip(hu.astype(np.float32), -125, 275) + 125) / 400
    np.testing.assert_allclose(volume.image, np.moveaxis(expected, 2, 0), atol=1e-6)

    sagittal = read_nifti_volume(image_path, label_path, axis=0, ct_window=(-1000.0, 1000.0))
    assert sagittal.image.shape == (10, 12, 7) and sagittal.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert sagittal.image[0, 0, 0] == 0.0 and sagittal.image[0, 0, 4] == 1.0
    coronal = read_nifti_volume(image_path, axis=1)
    assert coronal.image.shape == (12, 10, 7) and coronal.label is None


def test_nifti_mr_percentiles_use_nonzero_voxels(tmp_path: Path) -> None:
    data = np.zeros((6, 6, 6), dtype=np.float32)
    data[1:5, 1:5, 1:5] = np.arange(64, dtype=np.float32).reshape(4, 4, 4) + 100
    path = _save(tmp_path / "mr.nii.gz", data)
    volume = read_nifti_volume(path, modality="mr", mr_percentiles=(0.0, 100.0))
    inside = np.moveaxis(data, 2, 0) > 0
    assert volume.image[inside].min() == 0.0 and volume.image[inside].max() == 1.0
    assert volume.image[~inside].max() == 0.0  # background (0) clips to the low percentile
    np.testing.assert_array_equal(volume.image, np.moveaxis(normalize_mr(data, (0.0, 100.0)), 2, 0))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_write_nifti_labels_round_trip(tmp_path: Path, axis: int) -> None:
    image_path, label_path, _, label = _ct_case(tmp_path)
    volume = read_nifti_volume(image_path, label_path, axis=axis, num_classes=3)
    out = tmp_path / "pred" / f"axis{axis}.nii.gz"
    write_nifti_labels(out, volume.label, volume)
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, nib.load(str(image_path)).affine, atol=1e-5)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(AFFINE)
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)
    again = read_nifti_volume(image_path, out, axis=axis, num_classes=3)
    np.testing.assert_array_equal(again.label, volume.label)
    with pytest.raises(ValueError, match=r"labels shape .* differs from case 'liver_001'"):
        write_nifti_labels(out, volume.label[:1], volume)


def test_write_nifti_labels_for_a_synapse_volume(tmp_path: Path) -> None:
    volume = Volume("case0001", np.zeros((4, 5, 6), np.float32), None, (3.0, 0.5, 0.7), None, 0)
    labels = np.arange(120).reshape(4, 5, 6) % 4
    write_nifti_labels(tmp_path / "case0001.nii.gz", labels, volume)
    written = nib.load(str(tmp_path / "case0001.nii.gz"))
    assert written.header.get_zooms() == pytest.approx((3.0, 0.5, 0.7))
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)


def test_nifti_bad_inputs_name_the_files(tmp_path: Path) -> None:
    image_path, label_path, hu, label = _ct_case(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nothere.nii.gz: NIfTI file not found"):
        read_nifti_volume(tmp_path / "nothere.nii.gz")
    small = _save(tmp_path / "small.nii.gz", label[:5])
    with pytest.raises(
        ValueError, match=r"small.nii.gz: label shape \(5, 12, 7\) differs from image .*liver_001"
    ):
        read_nifti_volume(image_path, small)
    moved = AFFINE.copy()
    moved[0, 3] += 5.0
    shifted = _save(tmp_path / "shifted.nii.gz", label, moved)
    with pytest.raises(
        ValueError, match=r"shifted.nii.gz: label affine differs from image .*liver_001.nii.gz"
    ):
        read_nifti_volume(image_path, shifted)
    zoomed = _save(tmp_path / "zoomed.nii.gz", label, AFFINE @ np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"zoomed.nii.gz: label spacing .* differs from image .*liver_001"):
        read_nifti_volume(image_path, zoomed)
    with pytest.raises(
        ValueError,
        match=r"labelsTr/liver_001.nii.gz: label values must be class indices in "
        r"\[0, 2\), got 2",
    ):
        read_nifti_volume(image_path, label_path, num_classes=2)
    halves = _save(tmp_path / "halves.nii.gz", label.astype(np.float32) / 2)
    with pytest.raises(ValueError, match=r"halves.nii.gz: label values must be whole class indices, got 0.5"):
        read_nifti_volume(image_path, halves)
    nan_image = _save(tmp_path / "nan.nii.gz", np.where(label > 1, np.nan, 1.0).astype(np.float32))
    with pytest.raises(ValueError, match=r"nan.nii.gz: image has \d+ NaN/inf voxels"):
        read_nifti_volume(nan_image)
    four_d = _save(tmp_path / "fourd.nii.gz", np.zeros((4, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"fourd.nii.gz: expected a 3D volume, got shape \(4, 4, 4, 2\)"):
        read_nifti_volume(four_d)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"definitely not a nifti header"))
    with pytest.raises(ValueError, match=r"broken.nii.gz: not a readable NIfTI file"):
        read_nifti_volume(broken)
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        read_nifti_volume(image_path, axis=3)


def test_find_nifti_cases_msd_and_nnunet_layouts(tmp_path: Path) -> None:
    msd = tmp_path / "Task03_Liver"
    _ct_case(msd, "liver_001")
    _ct_case(msd, "liver_000")
    (msd / "imagesTr" / "._liver_000.nii.gz").write_bytes(b"AppleDouble junk from the MSD tarball")
    cases = find_nifti_cases(msd)
    assert [case for case, _, _ in cases] == ["liver_000", "liver_001"]
    assert cases[0][1].name == "liver_000.nii.gz" and cases[0][2] == msd / "labelsTr" / "liver_000.nii.gz"

    nnunet = tmp_path / "Dataset001"
    image_path, label_path, _, _ = _ct_case(nnunet, "brain_007")
    image_path.rename(image_path.with_name("brain_007_0000.nii.gz"))
    ((case, image, label),) = find_nifti_cases(nnunet)
    assert case == "brain_007" and image.name == "brain_007_0000.nii.gz" and label == label_path
    assert read_nifti_volume(image, label).case == "brain_007"

    (msd / "labelsTr" / "liver_001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"liver_001.nii.gz: no label for case 'liver_001'"):
        find_nifti_cases(msd)
    shutil.rmtree(msd / "labelsTr")
    assert all(label is None for _, _, label in find_nifti_cases(msd))
    with pytest.raises(FileNotFoundError, match=r"imagesTs: images folder not found"):
        find_nifti_cases(msd, images_dir="imagesTs")


def test_find_nifti_cases_one_channel_keeps_numbered_case_names(tmp_path: Path) -> None:
    # "scan_0007" without a "scan_0000" beside it is a case of its own, not channel 7 of "scan".
    for case in ("scan_0007", "scan_0012"):
        _ct_case(tmp_path, case)
    assert [case for case, _, _ in find_nifti_cases(tmp_path)] == ["scan_0007", "scan_0012"]
    # With "scan_0000" present the numbered files are channels, and one channel is expected.
    _ct_case(tmp_path, "scan_0000")
    with pytest.raises(ValueError, match=r"scan_0012.nii.gz: extra input channel; the data set is read with one"):
        find_nifti_cases(tmp_path)


def test_find_nifti_cases_groups_channel_files_and_msd_4d_files(tmp_path: Path) -> None:
    image_path, label_path, hu, _ = _ct_case(tmp_path, "brats_001")
    image_path.rename(image_path.with_name("brats_001_0000.nii.gz"))
    _save(tmp_path / "imagesTr" / "brats_001_0001.nii.gz", hu)
    _, second_label, _, _ = _ct_case(tmp_path, "brats_002")
    _save(tmp_path / "imagesTr" / "brats_002.nii.gz", np.stack([hu, hu], axis=3))  # MSD: one 4D file
    (first, images, label), (second, single, _) = find_nifti_cases(tmp_path, channels=2)
    assert first == "brats_001" and [p.name for p in images] == ["brats_001_0000.nii.gz", "brats_001_0001.nii.gz"]
    assert label == label_path and second == "brats_002" and single.name == "brats_002.nii.gz"
    check_nifti_header(images, label, channels=2)
    check_nifti_header(single, second_label, channels=2)
    with pytest.raises(ValueError, match=r"brats_002.nii.gz: expected a 4D volume \(X, Y, Z, 3\) of 3 channels"):
        check_nifti_header(single, second_label, channels=3)
    a = read_nifti_volume(images, label, channels=2, normalization=["ct"])
    b = read_nifti_volume(single, second_label, channels=2, normalization=["ct"])
    assert a.image.shape == b.image.shape == (7, 2, 10, 12)
    np.testing.assert_array_equal(a.image, b.image)


def test_normalize_zscore_uses_nonzero_voxels_and_keeps_zeros() -> None:
    image = np.zeros((4, 5, 6), np.float32)
    image[1:3, 1:4, 2:5] = np.arange(18, dtype=np.float32).reshape(2, 3, 3) + 10
    out = normalize_zscore(image)
    foreground = out[image != 0]
    assert abs(foreground.mean()) < 1e-6 and abs(foreground.std() - 1) < 1e-5
    assert (out[image == 0] == 0).all()
    np.testing.assert_array_equal(normalize_zscore(np.full((3, 3), 5.0)), np.zeros((3, 3)))


def test_nifti_slice_and_volume_datasets(tmp_path: Path) -> None:
    _, _, hu, label = _ct_case(tmp_path, "liver_001")
    label[..., 3] = 0  # one empty axial slice
    _save(tmp_path / "labelsTr" / "liver_001.nii.gz", label)
    cases = find_nifti_cases(tmp_path)
    slices = NiftiSliceDataset(cases, num_classes=3, axis=2)
    assert len(slices) == 7 and slices.names[3] == "liver_001_slice003"
    image, lab = slices[3]
    assert image.shape == (10, 12) and image.dtype == np.float32 and lab.dtype == np.int64
    np.testing.assert_array_equal(lab, label[..., 3])
    kept = NiftiSliceDataset(cases, num_classes=3, axis=2, skip_empty=True)
    assert len(kept) == 6 and "liver_001_slice003" not in kept.names
    with pytest.raises(ValueError, match=r"label values must be class indices in \[0, 2\)"):
        NiftiSliceDataset(cases, num_classes=2)
    with pytest.raises(ValueError, match="case 'x' has no label"):
        NiftiSliceDataset([("x", cases[0][1], None)], num_classes=3)

    volumes = NiftiVolumeDataset(cases, num_classes=3, modality="ct", axis=0)
    volume = volumes[0]
    assert len(volumes) == 1 and volume.case == "liver_001" and volume.image.shape == (10, 12, 7)
    np.testing.assert_array_equal(volume.label, label)


# --------------------------------------------------------------------------------------------------
# The MRI-lobe demo set (real data from Debian mricron-data)
# --------------------------------------------------------------------------------------------------

needs_templates = pytest.mark.skipif(
    not (DEBIAN_MRICRON_TEMPLATES / "aal.nii.gz").is_file(),
    reason="Debian mricron-data is not installed (apt-get install -y mricron-data)",
)


@pytest.fixture(scope="module")
def lobes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("lobes") / "mri_lobes"
    return root, prepare_mri_lobes(root)


@needs_templates
def test_prepare_mri_lobes_split_and_lists(lobes: tuple[Path, dict]) -> None:
    root, summary = lobes
    names = (root / "classes.txt").read_text().splitlines()
    assert summary["num_classes"] == 9 and len(names) == 9 and names[0] == "background"
    assert names == summary["class_names"] and "frontal" in names and "cerebellum" in names
    assert json.loads((root / "prepared.json").read_text())["train_slices"] == summary["train_slices"]
    assert "mid-sagittal" in (root / "README.md").read_text()

    # No shared voxel: the two cases' world x ranges are disjoint, with the one midline column between.
    first = nib.load(str(root / "imagesTr" / "case0001.nii.gz"))
    second = nib.load(str(root / "imagesTr" / "case0002.nii.gz"))
    assert first.shape[0] + second.shape[0] == 181 - 1
    x_first = first.affine[0, 3] + first.affine[0, 0] * np.array([0, first.shape[0] - 1])
    x_second = second.affine[0, 3] + second.affine[0, 0] * np.array([0, second.shape[0] - 1])
    assert x_first.max() < 0.0 < x_second.min() and x_second.min() - x_first.max() == pytest.approx(2.0)
    template = nib.load(str(DEBIAN_MRICRON_TEMPLATES / "ch2.nii.gz"))
    np.testing.assert_array_equal(np.asarray(second.dataobj), np.asarray(template.dataobj)[91:])

    train = (root / "lists" / "train.txt").read_text().split()
    assert len(train) == summary["train_slices"] > 100
    assert all(name.startswith("case0001_slice") for name in train)
    assert sorted(p.stem for p in (root / "train_npz").iterdir()) == sorted(train)
    assert (root / "lists" / "test_vol.txt").read_text().split() == ["case0002"]
    assert [p.name for p in (root / "test_vol_h5").iterdir()] == ["case0002.npy.h5"]
    assert (root / "lists" / "all.lst").read_text().split() == ["case0001.npy.h5", "case0002.npy.h5"]


@needs_templates
def test_prepared_lobes_read_back_by_every_loader(lobes: tuple[Path, dict]) -> None:
    root, summary = lobes
    slices = SynapseSliceDataset(root)
    image, label = slices[len(slices) // 2]
    assert image.shape == tuple(summary["slice_shape"]) and 0.0 <= image.min() and image.max() <= 1.0
    assert label.max() < 9 and label.any()

    (test_volume,) = SynapseVolumeDataset(root)
    nifti_cases = find_nifti_cases(root)
    assert [case for case, _, _ in nifti_cases] == ["case0001", "case0002"]
    nifti_volume = NiftiVolumeDataset(nifti_cases[1:], num_classes=9, modality="mr", axis=2)[0]
    # The Synapse copy is exactly what the NIfTI loader makes of the NIfTI copy.
    np.testing.assert_array_equal(test_volume.image, nifti_volume.image)
    np.testing.assert_array_equal(test_volume.label, nifti_volume.label)
    assert test_volume.image.shape == tuple(summary["volume_shape"]) == (181, 90, 217)
    assert set(np.unique(test_volume.label)) == set(range(9))
    train_volume = read_nifti_volume(*nifti_cases[0][1:], modality="mr", axis=2, num_classes=9)
    z = int(slices.names[0].rsplit("slice", 1)[1])
    np.testing.assert_array_equal(slices[0][0], train_volume.image[z])
    np.testing.assert_array_equal(slices[0][1], train_volume.label[z])
    # 2.5D: a training slice's neighbours, found by file name, are the volume's neighbouring slices.
    context = SynapseSliceDataset(root, context_slices=2)
    middle = len(context) // 2
    z = int(context.names[middle].rsplit("slice", 1)[1])
    np.testing.assert_array_equal(context[middle][0], stack_context_slices(train_volume.image[:, None], 2)[z])


@needs_templates
@pytest.mark.parametrize("name", ["mri_lobes_cpu", "mri_lobes_20min"])
def test_lobe_recipes_read_a_nifti_scan_as_prepare_wrote_it(lobes: tuple[Path, dict], name: str) -> None:
    """`segment predict scan.nii.gz` with a lobe run normalises the MRI as the slices it trained on (not a CT window)."""
    from vit_segmentation.config import SegmentationConfig
    from vit_segmentation.task import nifti_read_options
    from vit_training.config import load_config

    root, _ = lobes
    shipped = Path(__file__).resolve().parents[1] / "configs" / "segmentation" / f"{name}.yaml"
    config = load_config(SegmentationConfig, shipped, [f"data.root={root}"])
    (test_volume,) = SynapseVolumeDataset(root)
    image, label = (root / "imagesTr/case0002.nii.gz"), (root / "labelsTr/case0002.nii.gz")
    scan = read_nifti_volume(image, label, num_classes=9, **nifti_read_options(config))
    np.testing.assert_array_equal(scan.image, test_volume.image)


@needs_templates
def test_prepare_reruns_and_refuses_foreign_folders(lobes: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = lobes
    stale = root.parent / f".{root.name}.partial-interrupted"
    stale.mkdir()
    (stale / "half.npz").write_bytes(b"")
    again = prepare_mri_lobes(root)  # replaces its own earlier output, clears the interrupted leftover
    assert again["train_slices"] == summary["train_slices"] and not stale.exists()
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"mine: exists and was not written by prepare_mri_lobes"):
        prepare_mri_lobes(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_prepare_errors_without_templates(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y mricron-data"):
        prepare_mri_lobes(tmp_path / "out", templates_dir=tmp_path / "nowhere")
    templates = tmp_path / "templates"
    _save(templates / "ch2.nii.gz", np.zeros((6, 5, 4), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    _save(templates / "aal.nii.gz", np.zeros((6, 5, 4), np.uint8), np.diag([2.0, 1.0, 1.0, 1.0]))
    (templates / "aal.nii.txt").write_text("1 Precentral_L 2001\n")
    with pytest.raises(ValueError, match=r"aal.nii.gz: atlas grid .* differs from .*ch2.nii.gz"):
        prepare_mri_lobes(tmp_path / "out", templates_dir=templates)
    _save(templates / "aal.nii.gz", np.zeros((6, 5, 4), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"aal.nii.txt: lobe digit 2 \(frontal\) should hold regions"):
        prepare_mri_lobes(tmp_path / "out", templates_dir=templates)
    assert not (tmp_path / "out").exists()
