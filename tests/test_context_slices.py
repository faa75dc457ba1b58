"""2.5D input (`data.context_slices`): neighbouring slices as channels, in training and inference alike."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from test_segmentation_task import TINY, synthetic_slice, write_synapse
from torch import nn

from vit_segmentation.config import SegmentationConfig
from vit_segmentation.data import (
    NiftiSliceDataset,
    SynapseSliceDataset,
    find_nifti_cases,
    stack_context_slices,
)
from vit_segmentation.task import SegmentationTask, predict_volume
from vit_segmentation.transforms import GroupGamma
from vit_training.config import ConfigError, load_config
from vit_training.loop import fit


def test_stack_context_slices_orders_channels_and_repeats_the_ends() -> None:
    volume = np.arange(4, dtype=np.float32)[:, None, None, None] + np.array([0.0, 10.0])[None, :, None, None]
    volume = np.broadcast_to(volume, (4, 2, 3, 5)).copy()  # slice z, channel c holds z + 10c
    stacked = stack_context_slices(volume, 1)
    assert stacked.shape == (4, 6, 3, 5)
    # Channel-major: channel 0's slices z-1, z, z+1, then channel 1's; the ends repeat.
    expected = [[0, 0, 1, 10, 10, 11], [0, 1, 2, 10, 11, 12], [1, 2, 3, 11, 12, 13], [2, 3, 3, 12, 13, 13]]
    np.testing.assert_array_equal(stacked[:, :, 0, 0], expected)
    assert stack_context_slices(volume, 0) is volume
    # A batch of the volume (at=) is those rows of the whole stack, ends included.
    np.testing.assert_array_equal(stack_context_slices(volume, 1, at=range(2, 4)), stacked[2:4])
    np.testing.assert_array_equal(stack_context_slices(volume, 1, at=[0]), stacked[:1])
    np.testing.assert_array_equal(stack_context_slices(volume, 0, at=[3]), volume[3:])
    two = stack_context_slices(volume[:1, :1], 2)  # one slice: every neighbour is itself
    assert two.shape == (1, 5, 3, 5) and np.all(two == 0)


def _slices_with_gaps(root: Path) -> None:
    """Slices 3, 4, 5 and 7 of case0001 (6 left out, as a writer that skips empty slices does);
    slice z's image is the constant z, so a read's channels name the slices it took."""
    for z in (3, 4, 5, 7):
        path = root / "train_npz" / f"case0001_slice{z:03d}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, image=np.full((6, 8), float(z), np.float32), label=np.full((6, 8), z % 2, np.float32))
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "train.txt").write_text("case0001_slice004\ncase0001_slice005\ncase0001_slice003\n")


def test_synapse_slices_read_their_neighbours_by_name(tmp_path: Path) -> None:
    _slices_with_gaps(tmp_path)
    plain = SynapseSliceDataset(tmp_path, num_classes=2)
    assert plain[0][0].shape == (6, 8)
    dataset = SynapseSliceDataset(tmp_path, num_classes=2, context_slices=2)
    taken = {name: [float(channel[0, 0]) for channel in dataset.read(i)[0]] for i, name in enumerate(dataset.names)}
    # 4: 2 has no file -> 3 (towards the centre); 5: 6 and 7 -> 7 exists two away, 6 missing -> 5.
    assert taken == {"case0001_slice004": [3, 3, 4, 5, 5], "case0001_slice005": [3, 4, 5, 5, 7],
                     "case0001_slice003": [3, 3, 3, 4, 5]}
    image, label = dataset.read(1)
    assert image.shape == (5, 6, 8) and label.dtype == np.int64 and np.all(label == 1)  # the centre's label

    (tmp_path / "lists" / "bad.txt").write_text("case0001\n")
    np.savez(tmp_path / "train_npz" / "case0001.npz", image=np.zeros((6, 8), np.float32),
             label=np.zeros((6, 8), np.float32))
    with pytest.raises(ValueError, match=r"slice name 'case0001' does not end in _slice<number>"):
        SynapseSliceDataset(tmp_path, list_file="bad.txt", num_classes=2, context_slices=1)
    np.savez(tmp_path / "train_npz" / "case0001_slice006.npz", image=np.zeros((5, 8), np.float32),
             label=np.zeros((5, 8), np.float32))
    dataset = SynapseSliceDataset(tmp_path, num_classes=2, context_slices=2)  # the folder is listed once, here
    with pytest.raises(ValueError, match=r"case0001_slice006.npz: shape \(5, 8\), but its neighbour"):
        dataset.read(1)


def test_nifti_slices_stack_the_volume_neighbours(tmp_path: Path) -> None:
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    hu = np.broadcast_to(np.arange(5, dtype=np.float32) * 50 - 100, (6, 7, 5)).copy()  # axial slice z: 50z - 100 HU
    labels = np.zeros((6, 7, 5), np.uint8)
    labels[2:4, 2:5, :] = 1
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "imagesTr" / "a.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "labelsTr" / "a.nii.gz")
    cases = find_nifti_cases(tmp_path)
    plain = NiftiSliceDataset(cases, num_classes=2, axis=2)
    context = NiftiSliceDataset(cases, num_classes=2, axis=2, context_slices=1)
    for z in range(5):
        image, label = context[z]
        assert image.shape == (3, 6, 7)
        for channel, neighbour in enumerate((max(z - 1, 0), z, min(z + 1, 4))):
            np.testing.assert_array_equal(image[channel], plain[neighbour][0])
        np.testing.assert_array_equal(label, plain[z][1])


class _MeanOfChannels(nn.Module):
    """Logits (background 0, foreground = the input channels' mean - 0.5): shows what the model was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[1])
        return torch.cat([torch.zeros_like(x[:, :1]), x.mean(dim=1, keepdim=True) - 0.5], dim=1)


def test_predict_volume_gives_the_model_the_same_stack() -> None:
    volume = np.zeros((5, 8, 8), np.float32)
    volume[2] = 1.0  # one bright slice: only it is above 0.5 on its own; with its neighbours, none is
    model = _MeanOfChannels()
    alone = predict_volume(model, volume, (8, 8), "bilinear", 2)
    with_context = predict_volume(model, volume, (8, 8), "bilinear", 2, context_slices=1)
    assert set(model.seen) == {1, 3}
    np.testing.assert_array_equal(alone.reshape(5, -1).max(axis=1), [0, 0, 1, 0, 0])
    assert with_context.max() == 0  # the mean of (0, 1, 0) is 1/3
    # Equal to the model on the explicitly stacked slices.
    stacked = torch.from_numpy(stack_context_slices(volume[:, None], 1))
    np.testing.assert_array_equal(with_context, model(stacked).argmax(1).numpy())


def test_in_chans_follows_the_context_and_contradictions_are_named(tmp_path: Path) -> None:
    root = write_synapse(tmp_path / "data", train_slices=4, test_cases=1)
    config = load_config(SegmentationConfig, None, [*TINY, f"data.root={root}", "data.context_slices=1",
                                                    "model.backbone.in_chans=null", "augment.gamma_prob=0.3"])
    task = SegmentationTask(config)
    assert task.config.model.backbone.in_chans == 3
    # The gamma augmentation draws once per modality: its 2k + 1 neighbouring slices share the curve.
    gamma = [step for step in task.train_transform().pipeline.transforms if isinstance(step, GroupGamma)]
    assert len(gamma) == 1 and gamma[0].group_size == 3 and gamma[0].p == 0.3
    bad = load_config(SegmentationConfig, None, [*TINY, f"data.root={root}", "data.context_slices=2",
                                                 "model.backbone.in_chans=1"])
    with pytest.raises(ConfigError, match=r"in_chans=1, but the slices have 1 channel and data.context_slices=2 "
                                          r"adds 4 slices to each; set in_chans=5 or null"):
        SegmentationTask(bad)
    with pytest.raises(ConfigError, match=r"data.context_slices=-1 must be >= 0"):
        load_config(SegmentationConfig, None, ["data.context_slices=-1"])


def test_a_context_run_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    # write_synapse names its slices case000{1,2}_slice<index>: every other index is the same case,
    # so each slice's neighbours are partly missing files, replaced towards the centre.
    AcceleratorState._reset_state(reset_partial_state=True)
    root = write_synapse(tmp_path / "data", train_slices=8, test_cases=1)
    config = load_config(SegmentationConfig, None, [*TINY, f"data.root={root}", f"train.output_dir={tmp_path / 'run'}",
                                                    "train.epochs=2", "data.context_slices=1",
                                                    "model.backbone.in_chans=null"])
    task = SegmentationTask(config)
    image, _ = task.build_train_dataset()[0]
    assert image.shape == (3, 32, 32)
    result = fit(task, task.config)
    AcceleratorState._reset_state(reset_partial_state=True)
    assert np.isfinite(result.metrics["mean_dice"])
    from vit_segmentation import Segmenter

    segmenter = Segmenter.from_pretrained(tmp_path / "run")
    assert segmenter.preprocessing()["context_slices"] == 1
    spec = segmenter.graph_spec()  # what export traces: the stacked slices, not one repeated grey channel
    assert spec.example_inputs[0].shape[1] == 3 and "z-1 .. z+1" in spec.inputs["slices"]
    rng = np.random.default_rng(3)
    volume = np.stack([synthetic_slice(rng, 36, 40)[0] for _ in range(3)])
    assert segmenter.predict(volume).labels.shape == (3, 36, 40)
