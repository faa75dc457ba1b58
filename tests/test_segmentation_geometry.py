"""How NIfTI volumes are read and written back: orientation, spacing and channels.

- orientation: one anatomy stored as RAS, LPS, with permuted axes and with an oblique affine gives
  the same prediction after reorientation, and each written prediction has its input's shape,
  affine and header codes;
- spacing: one anatomy stored at 1 mm and at 2 mm reads onto the same 2 mm working grid, the
  prediction goes back to each file's own grid (exactly, where the grids nest), and the metrics
  are computed on the stored labels at their own spacing;
- channels: a 2-channel case reads into (S, C, H, W) with a normalisation per channel (from
  ``<case>_0000`` / ``_0001`` or from one 4D file alike) and trains a step.

The "model" of the orientation test is a fixed convolution that marks bright voxels whose
neighbour above (previous row) is dark: a deterministic function of the reoriented intensities
that is not symmetric, so a volume sliced or flipped differently would give different labels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from torch import nn

from vit_segmentation.config import DataConfig, ModelConfig, SegmentationConfig
from vit_segmentation.data import (
    check_orientation,
    normalize_ct,
    normalize_zscore,
    read_nifti_volume,
    resample,
    write_nifti_labels,
)
from vit_segmentation.metrics import case_metrics
from vit_segmentation.predict import segment_nifti
from vit_segmentation.task import SegmentationTask, predict_volume, resolve_config

SHAPE = (32, 32, 6)  # RAS (x, y, z)
RAS_AFFINE = np.array([[1.0, 0, 0, -16], [0, 1.0, 0, -20], [0, 0, 2.0, -6], [0, 0, 0, 1]])


class EdgeModel(nn.Module):
    """images (B, 1, H, W) -> logits (B, 2, H, W): class 1 where a voxel is bright and the one above it dark."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.conv.weight[0, 0, 0, 1] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        edge = self.conv(x) - 0.3
        return torch.cat([-edge, edge], dim=1)


def anatomy(rng: np.random.Generator) -> np.ndarray:
    """A CT-like RAS volume in HU: blocks of soft tissue on fat, no symmetry."""
    image = np.full(SHAPE, -100.0, np.float32)
    for _ in range(6):
        x, y = rng.integers(0, 24, size=2)
        z = rng.integers(0, 4)
        image[x:x + rng.integers(3, 9), y:y + rng.integers(3, 9), z:z + 2] = rng.uniform(100, 250)
    return image + rng.normal(0, 3, SHAPE).astype(np.float32)


def store(path: Path, ras_image: np.ndarray, codes: str, rotate_degrees: float = 0.0) -> nib.Nifti1Image:
    """Save the RAS array in the voxel order `codes`, with the affine that keeps every voxel's world
    position (then rotated about z by `rotate_degrees`: an oblique scan). Returns the image saved."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    data = apply_orientation(ras_image, transform)
    affine = RAS_AFFINE @ inv_ornt_aff(transform, ras_image.shape)
    if rotate_degrees:
        angle = np.deg2rad(rotate_degrees)
        rotation = np.eye(4)
        rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        affine = rotation @ affine
    nii = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=2)
    nib.save(nii, path)
    return nii


def to_ras(nii: nib.Nifti1Image) -> np.ndarray:
    """A file's voxels in the RAS order of its closest axes."""
    transform = ornt_transform(io_orientation(nii.affine), axcodes2ornt("RAS"))
    return apply_orientation(np.asanyarray(nii.dataobj), transform)


def edge_config(**data: object) -> SegmentationConfig:
    config = SegmentationConfig(
        model=ModelConfig(num_classes=2),
        data=DataConfig(format="nifti", input_size=(32, 32), modality="ct", interpolation="bilinear", **data),
    )
    return resolve_config(config)


@pytest.mark.parametrize("codes", ["LPS", "ASR", "PIL"])
def test_check_orientation_accepts_axis_codes(codes: str) -> None:
    assert check_orientation(codes.lower()) == codes
    assert check_orientation("none") is None and check_orientation(None) is None


@pytest.mark.parametrize("bad", ["RAX", "RLS", "RA", "RASS"])
def test_check_orientation_rejects_other_codes(bad: str) -> None:
    with pytest.raises(ValueError, match=f"orientation={bad!r} must be three letters"):
        check_orientation(bad)


def test_same_anatomy_in_any_orientation_gives_the_same_prediction(tmp_path: Path) -> None:
    ras_image = anatomy(np.random.default_rng(0))
    variants = {"RAS": ("RAS", 0.0), "LPS": ("LPS", 0.0), "ASR": ("ASR", 0.0), "oblique": ("PIL", 12.0)}
    config = edge_config(orientation="RAS", axis=2)
    model = EdgeModel()
    predictions = {}
    for name, (codes, degrees) in variants.items():
        source = store(tmp_path / f"{name}.nii.gz", ras_image, codes, degrees)
        labels, volume = segment_nifti(model, tmp_path / f"{name}.nii.gz", config)
        assert volume.shape == (6, 32, 32)  # axial slices of the RAS grid, whatever the stored order
        out = tmp_path / "out" / f"{name}.nii.gz"
        write_nifti_labels(out, labels, volume)
        written = nib.load(out)
        # Each output is on its input's grid, with its affine and header codes.
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 2)
        predictions[name] = to_ras(written)
    reference = predictions["RAS"]
    assert 0 < reference.sum() < reference.size / 4  # the edges: some voxels, not all
    for name, prediction in predictions.items():
        np.testing.assert_array_equal(prediction, reference, err_msg=name)


def test_orientation_none_slices_the_stored_array(tmp_path: Path) -> None:
    ras_image = anatomy(np.random.default_rng(1))
    store(tmp_path / "lps.nii.gz", ras_image, "LPS")
    kept = read_nifti_volume(tmp_path / "lps.nii.gz", orientation=None)
    ras = read_nifti_volume(tmp_path / "lps.nii.gz", orientation="RAS")
    np.testing.assert_array_equal(kept.image, ras.image[:, ::-1, ::-1])  # LPS = RAS with x and y reversed
    assert kept.geometry is not None and kept.geometry.orientation is None
    # With the stored order kept the prediction of the stored array is written as it is.
    labels = predict_volume(EdgeModel(), kept.image, (32, 32), "bilinear")
    write_nifti_labels(tmp_path / "kept.nii.gz", labels, kept)
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "kept.nii.gz").dataobj),
                                  np.moveaxis(labels, 0, 2))


def test_axis_is_an_anatomical_axis_after_reorientation(tmp_path: Path) -> None:
    ras_image = anatomy(np.random.default_rng(2))
    store(tmp_path / "asr.nii.gz", ras_image, "ASR")  # stored (y, z, x)
    coronal = read_nifti_volume(tmp_path / "asr.nii.gz", orientation="RAS", axis=1, ct_window=(-200.0, 300.0))
    assert coronal.shape == (32, 32, 6)  # S = y (anterior), (H, W) = (x, z)
    np.testing.assert_allclose(coronal.image, np.moveaxis(normalize_ct(ras_image, (-200.0, 300.0)), 1, 0), atol=1e-6)
    assert coronal.spacing == (1.0, 1.0, 2.0)


# ------------------------------------------------------------------------------------------ spacing
def test_resample_round_trip_is_exact_where_the_grids_nest() -> None:
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 4, size=(5, 7, 3))
    fine = resample(coarse, (10, 14, 6), order=0)
    np.testing.assert_array_equal(fine, coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2))
    np.testing.assert_array_equal(resample(fine, coarse.shape, order=0), coarse)
    # Linear on a block-constant image: the coarse voxel centres fall between two equal fine voxels.
    image = rng.normal(size=(5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(resample(image.repeat(2, 0).repeat(2, 1).repeat(2, 2), image.shape, order=1),
                               image, atol=1e-6)


def two_spacings(tmp_path: Path) -> tuple[Path, Path, Path, Path, np.ndarray]:
    """One anatomy at 2 mm (16 x 16 x 4) and at 1 mm (the same voxels repeated: 32 x 32 x 8), with
    labels; the 1 mm grid's voxel centres sit where the 2 mm grid's field of view puts them."""
    rng = np.random.default_rng(4)
    coarse_labels = np.zeros((16, 16, 4), np.uint8)
    coarse_labels[3:9, 4:12, 1:3] = 1
    coarse_labels[10:14, 2:6, 0:4] = 2
    coarse_image = (coarse_labels * 120.0 + rng.normal(0, 5, coarse_labels.shape)).astype(np.float32)
    coarse_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_affine[:3, 3] = [-10.0, 4.0, 1.0]
    fine_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine_affine[:3, 3] = coarse_affine[:3, 3] - 0.5  # same field of view: voxel edges coincide
    paths = [tmp_path / name for name in ("image_2mm.nii.gz", "label_2mm.nii.gz", "image_1mm.nii.gz", "label_1mm.nii.gz")]
    up = (lambda a: a.repeat(2, 0).repeat(2, 1).repeat(2, 2))  # noqa: E731
    for path, data, affine in zip(paths, (coarse_image, coarse_labels, up(coarse_image), up(coarse_labels)),
                                  (coarse_affine, coarse_affine, fine_affine, fine_affine), strict=True):
        nib.save(nib.Nifti1Image(data, affine), path)
    return (*paths, coarse_labels)


def test_volumes_at_two_spacings_meet_on_the_target_grid_and_go_back(tmp_path: Path) -> None:
    image_2mm, label_2mm, image_1mm, label_1mm, coarse_labels = two_spacings(tmp_path)
    options = {"orientation": "RAS", "axis": 2, "ct_window": (-50.0, 300.0), "num_classes": 3}
    native = read_nifti_volume(image_2mm, label_2mm, **options)
    resampled = read_nifti_volume(image_1mm, label_1mm, target_spacing=[2.0], **options)
    assert native.shape == resampled.shape == (4, 16, 16)
    assert resampled.spacing == native.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(resampled.label, native.label)
    np.testing.assert_allclose(resampled.image, native.image, atol=1e-5)
    # What the metrics see: the stored 1 mm labels at 1 mm.
    assert resampled.native_spacing == (1.0, 1.0, 1.0) and resampled.native_label.shape == (8, 32, 32)
    np.testing.assert_array_equal(resampled.native_label, np.moveaxis(np.asanyarray(nib.load(label_1mm).dataobj), 2, 0))
    # A prediction on the 2 mm working grid goes back onto the 1 mm file's own grid, exactly.
    write_nifti_labels(tmp_path / "back.nii.gz", resampled.label, resampled)
    back = nib.load(tmp_path / "back.nii.gz")
    source = nib.load(image_1mm)
    assert back.shape == source.shape
    np.testing.assert_allclose(back.affine, source.affine)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(nib.load(label_1mm).dataobj))
    # Upsampling a 2 mm file to 1 mm and back is exact too.
    fine = read_nifti_volume(image_2mm, label_2mm, target_spacing=[1.0, 1.0, 1.0], **options)
    assert fine.shape == (8, 32, 32) and fine.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(fine.to_source(fine.label), coarse_labels)


def test_target_spacing_is_in_reoriented_axis_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    affine = np.diag([-0.5, -0.5, 3.0, 1.0])  # LPS storage, 0.5 x 0.5 x 3 mm
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 24, 5)).astype(np.float32), affine), tmp_path / "scan.nii.gz")
    volume = read_nifti_volume(tmp_path / "scan.nii.gz", orientation="RAS", axis=2, modality="zscore",
                               target_spacing=[1.0, 2.0, 3.0])
    # x: 20 * 0.5 / 1 = 10, y: 24 * 0.5 / 2 = 6, z kept at 5; (S, H, W) = (z, x, y).
    assert volume.shape == (5, 10, 6)
    assert volume.spacing == (3.0, 1.0, 2.0) and volume.native_spacing == (3.0, 0.5, 0.5)
    labels = np.ones(volume.shape, np.int64)
    assert volume.to_source(labels).shape == (20, 24, 5)


def test_metrics_are_computed_on_the_stored_labels_at_their_spacing(tmp_path: Path) -> None:
    image_2mm, label_2mm, image_1mm, label_1mm, _ = two_spacings(tmp_path)
    config = edge_config(target_spacing=[2.0, 2.0, 2.0], ct_window=(-50.0, 300.0))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=3),
                                 data=dataclasses.replace(config.data, class_names=["a", "b"]))
    task = SegmentationTask(config)
    volume = read_nifti_volume(image_1mm, label_1mm, num_classes=3, **{
        key: value for key, value in task._nifti_args().items() if key != "num_classes"})
    model = EdgeModel()
    record = task.case_record(model, volume)
    prediction = volume.to_native(task.predict_volume(model, volume))
    for mode in task._modes():
        dice, hd95 = case_metrics(prediction, volume.native_label, 3, mode=mode, spacing=(1.0, 1.0, 1.0))
        np.testing.assert_allclose(record[f"{mode}/dice"], dice)
        np.testing.assert_allclose(record[f"{mode}/hd95"], hd95)


# ------------------------------------------------------------------------------------------ channels
def write_two_channel_case(folder: Path, case: str, rng: np.random.Generator, four_d: bool = False) -> np.ndarray:
    """A CT channel (HU) and an MR channel of one anatomy, 24 x 24 x 4, and its labels (returned)."""
    labels = np.zeros((24, 24, 4), np.uint8)
    x, y = rng.integers(2, 12, size=2)
    labels[x:x + 9, y:y + 9] = 1
    ct = (labels * 200.0 - 50 + rng.normal(0, 10, labels.shape)).astype(np.float32)
    mr = (labels * 300.0 + 200 + rng.normal(0, 20, labels.shape)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    if four_d:
        nib.save(nib.Nifti1Image(np.stack([ct, mr], axis=3), affine), folder / f"{case}.nii.gz")
    else:
        nib.save(nib.Nifti1Image(ct, affine), folder / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(mr, affine), folder / f"{case}_0001.nii.gz")
    return labels


def test_two_channel_case_reads_into_slice_channel_axes(tmp_path: Path) -> None:
    labels = write_two_channel_case(tmp_path / "imagesTr", "c", np.random.default_rng(6))
    files = [tmp_path / "imagesTr" / "c_0000.nii.gz", tmp_path / "imagesTr" / "c_0001.nii.gz"]
    volume = read_nifti_volume(files, channels=2, normalization=["ct", "zscore"], ct_window=(-100.0, 200.0))
    assert volume.image.shape == (4, 2, 24, 24) and volume.channels == 2 and volume.shape == (4, 24, 24)
    ct, mr = (np.asanyarray(nib.load(f).dataobj) for f in files)
    np.testing.assert_allclose(volume.image[:, 0], np.moveaxis(normalize_ct(ct, (-100.0, 200.0)), 2, 0), atol=1e-6)
    np.testing.assert_allclose(volume.image[:, 1], np.moveaxis(normalize_zscore(mr), 2, 0), atol=1e-5)
    # MSD keeps the channels in one 4D file: the same volume.
    write_two_channel_case(tmp_path / "msd", "c", np.random.default_rng(6), four_d=True)
    single = read_nifti_volume(tmp_path / "msd" / "c.nii.gz", channels=2, normalization=["ct", "zscore"],
                               ct_window=(-100.0, 200.0))
    np.testing.assert_allclose(single.image, volume.image, atol=1e-6)
    assert labels.shape == (24, 24, 4)


def test_channel_files_on_different_grids_are_named(tmp_path: Path) -> None:
    write_two_channel_case(tmp_path, "c", np.random.default_rng(7))
    moved = nib.load(tmp_path / "c_0001.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(moved.dataobj), np.diag([1.0, 1.0, 3.0, 1.0])), tmp_path / "c_0001.nii.gz")
    with pytest.raises(ValueError, match=r"c_0001.nii.gz: channel spacing .* differs from image .*c_0000.nii.gz"):
        read_nifti_volume([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"], channels=2)


def test_two_channel_case_trains_a_step(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    for case in ("a", "b"):
        labels = write_two_channel_case(tmp_path / "imagesTr", case, rng)
        (tmp_path / "labelsTr").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(labels, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "labelsTr" / f"{case}.nii.gz")
    backbone = {"preset": "vit_base_r50_s16", "hybrid_layers": [1, 1], "embed_dim": 48, "depth": 1, "num_heads": 2,
                "pretrained": None}
    from vit_backbone import BackboneConfig

    config = SegmentationConfig(
        model=ModelConfig(backbone=BackboneConfig(**backbone), num_classes=2, n_skip=2, decoder_channels=[16, 8, 8],
                          head_channels=16),
        data=DataConfig(format="nifti", root=str(tmp_path), input_size=(32, 32), channels=["CT", "T2"],
                        normalization=["ct", "zscore"], class_names=["organ"]),
    )
    task = SegmentationTask(config)
    assert task.config.model.backbone.in_chans == 2  # follows the channels
    train = task.build_train_dataset()
    images, labels = train[0]
    assert images.shape == (2, 32, 32) and labels.shape == (32, 32)
    model = task.build_model()
    batch = torch.utils.data.default_collate([train[i] for i in range(4)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, _ = task.loss(model, batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    # The prediction path takes (S, C, H, W) volumes.
    volume = read_nifti_volume([tmp_path / "imagesTr" / "a_0000.nii.gz", tmp_path / "imagesTr" / "a_0001.nii.gz"],
                               channels=2, normalization=["ct", "zscore"])
    assert task.predict_volume(model, volume).shape == (4, 24, 24)


def test_in_chans_that_contradicts_the_channels_is_a_config_error(tmp_path: Path) -> None:
    from vit_training.config import ConfigError

    config = SegmentationConfig(model=ModelConfig(num_classes=2),
                                data=DataConfig(format="nifti", channels=["T1", "T2"], input_size=(32, 32)))
    with pytest.raises(ConfigError, match=r"model.backbone.in_chans=3, but data.channels names 2 channels"):
        resolve_config(config)
