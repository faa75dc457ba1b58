"""The classification task: configs, fine-tuning a checkpoint, metrics, loss, evaluation, seeding, CLI.

Every data set here is written in tmp_path (IDX files with `write_idx`, an ImageFolder of PNGs);
nothing needs the real Fashion-MNIST or the training loop.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from vit_backbone import BackboneConfig, ConvStemEmbed, create_vit
from vit_classification.config import (
    AugmentConfig,
    ClassificationConfig,
    DataConfig,
    ModelConfig,
)
from vit_classification.data import resolve_config, write_idx
from vit_classification.metrics import (
    ClassificationMeter,
    classification_metrics,
    confusion_matrix,
    per_class_accuracy,
    topk_accuracy,
    write_predictions_csv,
)
from vit_classification.model import build_classifier, build_classifier_with_report
from vit_classification.predict import predict_images
from vit_classification.task import ClassificationTask
from vit_classification.visualize import save_confusion_matrix_png
from vit_training import OptimizerConfig, TrainConfig
from vit_training.config import ConfigError, load_config
from vit_training.seeding import sample_seed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "classification").glob("*.yaml"))

# A ViT small enough for a CPU test: 28 px grey, 4 px patches (7 x 7 tokens), width 32, 2 blocks.
TINY = {"preset": "vit_micro_patch4_28", "embed_dim": 32, "depth": 2, "num_heads": 2}


# ---------------------------------------------------------------------------------------------
# data made on the fly
# ---------------------------------------------------------------------------------------------
def separable_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8: class k tiles its own random 4 x 4 black-and-white texture, plus noise.

    Every patch of an image then shows its class (a ViT needs no position to tell them apart).
    """
    textures = np.random.default_rng(123).integers(0, 2, size=(10, 4, 4)) * 200
    images = np.tile(textures[labels], (1, 7, 7)) + rng.integers(0, 40, size=(len(labels), 28, 28))
    return images.astype(np.uint8)


def write_idx_dataset(root: Path, per_class_train: int = 6, per_class_test: int = 2) -> Path:
    """The four Fashion-MNIST IDX files (10 classes) under `root`, gzip'd like the Debian package."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", separable_images(labels, rng))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def idx_config(root: Path, **augment: object) -> ClassificationConfig:
    return ClassificationConfig(
        model=ModelConfig(backbone=BackboneConfig(**TINY)),
        data=DataConfig(format="fashion_mnist", root=str(root), input_size=28, channels=1, crop_pct=1.0),
        augment=AugmentConfig(**{"scale": (0.5, 1.0), "hflip": 0.5, "color_ops": 0, **augment}),
        optim=OptimizerConfig(lr=3e-3, weight_decay=0.0),
        train=TrainConfig(batch_size=16, seed=7),
    )


def write_grey_png(path: Path, first_pixel: int, fill: int = 128) -> None:
    """A 28 x 28 grey PNG whose top-left pixel carries a value the oracle model reads back."""
    pixels = np.full((28, 28), fill, dtype=np.uint8)
    pixels[0, 0] = first_pixel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def test_the_config_files_exist() -> None:
    names = {path.name for path in CONFIGS}
    assert {"fashion_mnist_cpu.yaml", "imagenet_vit_b16_finetune.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_file_loads(path: Path) -> None:
    config = load_config(ClassificationConfig, path)
    assert isinstance(config.model, ModelConfig) and isinstance(config.data, DataConfig)
    assert path.read_text().startswith("#"), "each config names its recipe in a comment header"


def test_demo_config_resolves_without_touching_the_data() -> None:
    config = resolve_config(load_config(ClassificationConfig, ROOT / "configs/classification/fashion_mnist_cpu.yaml"))
    assert config.model.num_classes == 10 and config.model.backbone.in_chans == 1 and config.model.backbone.img_size == 32
    assert config.data.class_names[0] == "T-shirt/top"


def test_config_disagreeing_with_the_data_is_one_config_error() -> None:
    config = ClassificationConfig(model=ModelConfig(num_classes=5))
    with pytest.raises(ConfigError, match=r"model.num_classes=5 but the data has 10 classes"):
        resolve_config(config)
    with pytest.raises(ConfigError, match="model.backbone.in_chans=3 but data.channels=1"):
        resolve_config(ClassificationConfig(model=ModelConfig(backbone=BackboneConfig(preset="vit_micro_patch4_28", in_chans=3))))


def test_range_checks_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("augment:\n  hflip: 1.5\n")
    with pytest.raises(ConfigError, match=r"augment.hflip=1.5 must lie in \[0, 1\]"):
        load_config(ClassificationConfig, path)
    with pytest.raises(ConfigError, match="model.backbone.preset='vit_nope' is not a vit_backbone preset"):
        load_config(ClassificationConfig, None, ["model.backbone.preset=vit_nope"])
    with pytest.raises(ConfigError, match=r"augment.erase_prob=1.5 must lie in \[0, 1\]"):
        load_config(ClassificationConfig, None, ["augment.erase_prob=1.5"])
    with pytest.raises(ConfigError, match=r"augment.translate_px=-1 must be >= 0"):
        load_config(ClassificationConfig, None, ["augment.translate_px=-1"])


def test_conv_stem_config_builds_a_conv_stem_vit_and_checks_the_patch_size() -> None:
    config = resolve_config(load_config(ClassificationConfig, None, [
        "model.backbone.embed_dim=32", "model.backbone.depth=2", "model.backbone.num_heads=2", "model.backbone.conv_stem=[8,16]", "data.input_size=32",
    ]))
    model = build_classifier(config.model)
    assert isinstance(model.patch_embed, ConvStemEmbed) and model.patch_embed.channels == (8, 16)
    assert model.patch_size == 4 and model.grid_size == (8, 8), "patch_size null takes the stem's stride"
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"model.backbone.patch_size=8 must equal the conv_stem's stride 4 \(2\*\*2\)"):
        load_config(ClassificationConfig, None, ["model.backbone.conv_stem=[8,16]", "model.backbone.patch_size=8"])
    with pytest.raises(ConfigError, match=r"model.backbone.conv_stem=\[8, 0\] must list positive channel counts"):
        load_config(ClassificationConfig, None, ["model.backbone.conv_stem=[8,0]"])


# ---------------------------------------------------------------------------------------------
# fine-tuning from a checkpoint
# ---------------------------------------------------------------------------------------------
def test_build_classifier_from_a_1000_class_timm_checkpoint_resets_only_the_head(tmp_path: Path) -> None:
    source = create_vit("vit_micro_patch4_28", num_classes=1000, embed_dim=32, depth=2, num_heads=2)
    checkpoint = {name: tensor.clone() for name, tensor in source.state_dict().items()}
    path = tmp_path / "vit_micro_in1k.safetensors"
    save_file(checkpoint, str(path))

    model, report = build_classifier_with_report(ModelConfig(BackboneConfig(**TINY, pretrained=str(path)), num_classes=10))

    assert report is not None and report.head_reset and report.layout == "timm"
    assert model.head.weight.shape == (10, 32) and model.head.bias.shape == (10,)
    own = model.state_dict()
    assert set(own) == set(checkpoint)
    for name, tensor in own.items():
        if not name.startswith("head."):
            assert torch.equal(tensor, checkpoint[name]), name
    # The new head is a fresh fine-tuning head, not left uninitialised: small, zero bias.
    assert torch.all(model.head.bias == 0) and 0 < model.head.weight.std() < 0.05


def test_build_classifier_keeps_a_fitting_head_and_refuses_a_forced_mismatch(tmp_path: Path) -> None:
    source = create_vit("vit_micro_patch4_28", num_classes=10, embed_dim=32, depth=2, num_heads=2)
    path = tmp_path / "same_classes.safetensors"
    save_file(dict(source.state_dict()), str(path))
    model = build_classifier(ModelConfig(BackboneConfig(**TINY, pretrained=str(path)), num_classes=10))
    assert torch.equal(model.head.weight, source.head.weight)

    with pytest.raises(ValueError, match="shape mismatch for head.weight"):
        build_classifier(ModelConfig(BackboneConfig(**TINY, pretrained=str(path), pretrained_reset_head=False), num_classes=7))
    with pytest.raises(FileNotFoundError, match="model.backbone.pretrained="):
        build_classifier(ModelConfig(BackboneConfig(**TINY, pretrained=str(tmp_path / "missing.pth")), num_classes=7))


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def python_topk(logits: list[list[float]], labels: list[int], k: int) -> float:
    """Top-k by sorting (score descending, then class index ascending: argmax's tie rule)."""
    hits = 0
    for scores, label in zip(logits, labels, strict=True):
        order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
        hits += label in order[:k]
    return hits / len(labels)


def test_topk_against_python_with_ties() -> None:
    logits = [
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # tie at the top: argmax is 0; label 1 is second
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: class c ranks c
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # label 5 ties with 1..4: rank 5, outside the top 5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [5.0, -1.0, 2.0, 2.0, 0.0, 7.0],
    ]
    labels = [1, 0, 5, 5, 5, 3]
    tensor = torch.tensor(logits)
    target = torch.tensor(labels)
    result = topk_accuracy(tensor, target, ks=(1, 2, 5, 6))
    for k in (1, 2, 5, 6):
        assert result[k] == pytest.approx(python_topk(logits, labels, k)), k
    assert result[1] == pytest.approx(2 / 6) and result[5] == pytest.approx(4 / 6) and result[6] == 1.0
    # top-1 agrees with the argmax prediction, ties included
    assert result[1] == pytest.approx(float((tensor.argmax(1) == target).float().mean()))


def test_confusion_matrix_and_per_class_accuracy_against_python() -> None:
    generator = torch.Generator().manual_seed(0)
    num_classes = 5
    labels = torch.randint(0, 4, (200,), generator=generator)  # class 4 never occurs
    predictions = torch.randint(0, num_classes, (200,), generator=generator)
    matrix = confusion_matrix(predictions, labels, num_classes)

    expected = [[0] * num_classes for _ in range(num_classes)]
    for true, predicted in zip(labels.tolist(), predictions.tolist(), strict=True):
        expected[true][predicted] += 1
    assert matrix.dtype == torch.int64 and matrix.tolist() == expected
    assert matrix.sum() == 200 and matrix.sum(dim=1).tolist() == [labels.tolist().count(c) for c in range(5)]

    accuracy = per_class_accuracy(matrix)
    for c in range(4):
        assert accuracy[c].item() == pytest.approx(expected[c][c] / sum(expected[c]))
    assert math.isnan(accuracy[4].item()), "an absent class has no accuracy (not 0)"

    logits = F.one_hot(predictions, num_classes).float()
    metrics = classification_metrics(logits, labels)
    assert metrics["mean_class_acc"] == pytest.approx(sum(expected[c][c] / sum(expected[c]) for c in range(4)) / 4)
    assert metrics["top1"] == pytest.approx(sum(expected[c][c] for c in range(5)) / 200)
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)))


def test_meter_batches_equal_one_pass() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(37, 12, generator=generator)
    labels = torch.randint(0, 12, (37,), generator=generator)
    meter = ClassificationMeter(12)
    for start in range(0, 37, 8):
        meter.update(logits[start : start + 8], labels[start : start + 8], torch.arange(start, min(start + 8, 37)))
    batched, whole = meter.compute(), classification_metrics(logits, labels)
    for key in ("top1", "top5", "mean_class_acc", "loss"):
        assert batched[key] == pytest.approx(whole[key]), key
    assert torch.equal(batched["confusion_matrix"], whole["confusion_matrix"])
    assert meter.indices.tolist() == list(range(37))
    assert torch.allclose(meter.top_probs[:, 0], logits.softmax(1).max(1).values)


def test_prediction_csv_and_confusion_png(tmp_path: Path) -> None:
    rows = [
        {"sample": "a b.png", "true_index": 1, "true_name": "cat", "predicted_index": 0, "predicted_name": "dog",
         "score": 0.6, "top5": [("dog", 0.6), ("cat", 0.4)]},
        {"sample": "c.png", "predicted_index": 1, "predicted_name": "cat", "score": 0.9, "top5": [("cat", 0.9)]},
    ]
    path = write_predictions_csv(tmp_path / "predictions.csv", rows)
    with path.open() as stream:
        read = list(csv.DictReader(stream))
    assert read[0]["sample"] == "a b.png" and read[0]["top5"] == "dog:0.600000|cat:0.400000"
    assert read[1]["true_index"] == "" and read[1]["score"] == "0.900000"
    with pytest.raises(ValueError, match="unknown columns"):
        write_predictions_csv(tmp_path / "bad.csv", [{"file": "x"}])

    small = save_confusion_matrix_png(torch.eye(10, dtype=torch.long) * 3, [f"class {i}" for i in range(10)],
                                      tmp_path / "cm10.png")
    large = save_confusion_matrix_png(torch.eye(100, dtype=torch.long), [str(i) for i in range(100)],
                                      tmp_path / "cm100.png")
    for png in (small, large):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# the task: loss, seeding, evaluation, prediction
# ---------------------------------------------------------------------------------------------
def test_loss_falls_on_a_separable_set(tmp_path: Path) -> None:
    # No crop or flip here: 30 steps are for learning the classes, not invariances.
    task = ClassificationTask(idx_config(write_idx_dataset(tmp_path / "idx"), scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                         hflip=0.0))
    model = task.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_set, eval_set = task.build_datasets()
    assert len(train_set) == 60 and eval_set is not None and len(eval_set) == 20
    loader = DataLoader(train_set, batch_size=16, shuffle=True, drop_last=True, generator=torch.Generator())
    losses = []
    step = 0
    while step < 30:
        train_set.set_epoch(step)
        for batch in loader:
            loss, logs = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
    assert 0 <= logs["acc"] <= 1
    assert math.log(10) * 0.8 < losses[0] < math.log(10) * 1.3, losses[0]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_mixup_loss_takes_soft_targets_and_odd_batches(tmp_path: Path) -> None:
    task = ClassificationTask(idx_config(write_idx_dataset(tmp_path / "idx"), mixup_alpha=0.8, cutmix_alpha=1.0))
    assert task.mixup is not None
    model = task.build_model()
    images = torch.randn(5, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 3, 4])
    mixed, targets = task._mix(images.clone(), labels)
    assert mixed.shape == images.shape and targets.shape == (5, 10)
    assert torch.allclose(targets.sum(1), torch.ones(5))
    # the odd one out keeps its image and gets its smoothed one-hot target
    assert torch.equal(mixed[4], images[4]) and targets[4].argmax() == 4
    assert targets[4, 4] == pytest.approx(1 - 0.1 + 0.1 / 10)
    loss, logs = task.loss(model, (images, labels, torch.arange(5)))
    assert loss.ndim == 0 and torch.isfinite(loss) and "acc" in logs


def test_batch_augmentations_change_the_batch_but_never_the_cached_samples(tmp_path: Path) -> None:
    root = write_idx_dataset(tmp_path / "idx")
    config = idx_config(root, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, translate_px=3, erase_prob=1.0)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_samples=True))
    task = ClassificationTask(config)
    train_set = task.build_train_dataset()  # the cache is allowed: these run per batch, after it
    items = [train_set[index] for index in range(8)]
    cached = torch.stack([train_set.cache[index] for index in range(8)]).clone()
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([item[1] for item in items])
    model = task.build_model()
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(0)
    loss, _ = task.loss(model, (images, labels, torch.arange(8)))
    handle.remove()
    assert torch.isfinite(loss)
    assert torch.equal(torch.stack([train_set.cache[index] for index in range(8)]), cached)
    assert seen[0].shape == images.shape and not torch.equal(seen[0], images)


def test_augmentation_is_seeded_by_epoch_and_index(tmp_path: Path) -> None:
    config = idx_config(write_idx_dataset(tmp_path / "idx"), scale=(0.2, 1.0))
    first = ClassificationTask(config).build_train_dataset()
    first.set_epoch(3)
    image, label, index = first[5]
    assert index == 5 and image.shape == (1, 28, 28)
    assert torch.equal(first[5][0], image), "same (epoch, index): same tensor"
    first[6]  # other samples in between do not shift the stream
    assert torch.equal(first[5][0], image)
    # A fresh data set (a resumed run, another worker or process) draws the same sample.
    resumed = ClassificationTask(config).build_train_dataset()
    resumed.set_epoch(3)
    assert torch.equal(resumed[5][0], image)
    resumed.set_epoch(4)
    assert not torch.equal(resumed[5][0], image), "a new epoch draws a new augmentation"
    assert sample_seed(7, 3, 5) != sample_seed(7, 4, 5) != sample_seed(7, 3, 6)
    # Evaluation is deterministic whatever the epoch.
    eval_set = ClassificationTask(config).build_eval_dataset()
    eval_set.set_epoch(9)
    assert torch.equal(eval_set[2][0], ClassificationTask(config).build_eval_dataset()[2][0])


def test_training_subset_is_fixed(tmp_path: Path) -> None:
    config = idx_config(write_idx_dataset(tmp_path / "idx"))
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_train_samples=13))
    one = ClassificationTask(config).build_train_dataset()
    two = ClassificationTask(dataclasses.replace(config, train=TrainConfig(seed=99))).build_train_dataset()
    assert len(one) == 13 and one.indices.tolist() == two.indices.tolist()


def test_cache_samples_flows_from_the_config_and_refuses_random_training_pipelines(tmp_path: Path) -> None:
    root = write_idx_dataset(tmp_path / "idx")
    deterministic = idx_config(root, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    cached = dataclasses.replace(deterministic, data=dataclasses.replace(deterministic.data, cache_samples=True))
    task = ClassificationTask(cached)
    train_set, eval_set = task.build_train_dataset(), task.build_eval_dataset()
    reference = ClassificationTask(deterministic).build_train_dataset()
    assert train_set.cache == {} and eval_set.cache == {} and reference.cache is None
    for epoch in (0, 1):
        train_set.set_epoch(epoch)
        assert torch.equal(train_set[4][0], reference[4][0])
    assert list(train_set.cache) == [4]
    flips = idx_config(root)  # hflip 0.5 and a random crop scale
    flips = dataclasses.replace(flips, data=dataclasses.replace(flips.data, cache_samples=True))
    with pytest.raises(ValueError, match="data.cache_samples .* draws random ops"):
        ClassificationTask(flips).build_train_dataset()
    assert ClassificationTask(flips).build_eval_dataset().cache == {}  # evaluation is deterministic


def test_cifar10_task_reads_names_and_converts_channels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [0, 4, 9]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    config = ClassificationConfig(
        model=ModelConfig(BackboneConfig(preset="vit_tiny_patch4_32", embed_dim=32, depth=1, num_heads=2)),
        data=DataConfig(format="cifar10", root=str(tmp_path), input_size=32, channels=1, crop_pct=1.0),
    )
    task = ClassificationTask(config)
    assert task.class_names == names and task.config.model.backbone.in_chans == 1
    # CIFAR's RGB statistics become luminance statistics for a grey model
    assert task.config.data.mean == [pytest.approx(0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465)]
    train, evaluation = task.build_datasets()
    assert len(train) == 15 and len(evaluation) == 3
    image, label, _ = train[1]
    assert image.shape == (1, 32, 32) and label == 4
    assert task.build_model()(image[None]).shape == (1, 10)


class Oracle(nn.Module):
    """Predicts the class written into each image's top-left pixel (value = 10 * class)."""

    def __init__(self, mean: float, std: float, num_classes: int) -> None:
        super().__init__()
        self.mean, self.std, self.num_classes = mean, std, num_classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = (images[:, 0, 0, 0] * self.std + self.mean) * 255
        predicted = torch.round(raw / 10).long()
        return F.one_hot(predicted, self.num_classes).float() * 4 * self.scale


def test_evaluate_in_one_process_returns_the_oracles_accuracy(tmp_path: Path) -> None:
    # An ImageFolder val tree of 3 classes (4, 3 and 5 images); each file says what the oracle predicts.
    truth_and_prediction = {"ant": [0, 0, 0, 1], "bee": [1, 1, 2], "cat": [2, 0, 2, 2, 2]}
    for split in ("train", "val"):
        for label, (name, predictions) in enumerate(truth_and_prediction.items()):
            for i, predicted in enumerate(predictions):
                write_grey_png(tmp_path / split / name / f"{i}.png", 10 * (predicted if split == "val" else label))
    config = ClassificationConfig(
        model=ModelConfig(backbone=BackboneConfig(**TINY)),
        data=DataConfig(format="imagefolder", root=str(tmp_path), input_size=28, channels=1, crop_pct=1.0),
        train=TrainConfig(batch_size=5),
    )
    task = ClassificationTask(config)
    assert task.class_names == ["ant", "bee", "cat"] and task.config.model.num_classes == 3
    eval_set = task.build_eval_dataset()
    model = Oracle(task.config.data.mean[0], task.config.data.std[0], 3)
    accelerator = Accelerator(cpu=True)
    loader = DataLoader(eval_set, batch_size=5, shuffle=False)  # 12 images: the last batch is partial
    model, loader = accelerator.prepare(model, loader)

    out = tmp_path / "out"
    metrics = task.evaluate(model, loader, accelerator, out, predictions_path=out / "predictions.csv")

    assert set(metrics) == {"top1", "top5", "mean_class_acc", "loss"}
    assert metrics["top1"] == pytest.approx(9 / 12)
    assert metrics["top5"] == 1.0  # 3 classes: every true class is within the best 5
    assert metrics["mean_class_acc"] == pytest.approx((3 / 4 + 2 / 3 + 4 / 5) / 3)
    per_class = json.loads((out / "per_class_accuracy.json").read_text())
    assert [entry["count"] for entry in per_class["classes"]] == [4, 3, 5]
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    with (out / "predictions.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 12, "every image once, the padded last batch included"
    for row in rows:
        written = np.asarray(Image.open(row["sample"]))[0, 0] // 10
        assert int(row["predicted_index"]) == written and row["true_name"] == Path(row["sample"]).parent.name

    task.visualize(model, next(iter(loader)), out)
    assert (out / "predictions.png").is_file()


def test_predict_images_reads_files_and_folders_in_any_mode(tmp_path: Path) -> None:
    write_grey_png(tmp_path / "photos" / "a.png", 20)
    (tmp_path / "photos" / "deep").mkdir()
    Image.fromarray(np.full((40, 30, 3), 90, dtype=np.uint8)).save(tmp_path / "photos" / "deep" / "b.jpg")
    Image.fromarray(np.full((28, 28, 4), 200, dtype=np.uint8), mode="RGBA").save(tmp_path / "c.png")
    config = resolve_config(ClassificationConfig(model=ModelConfig(backbone=BackboneConfig(**TINY))))
    model = build_classifier(config.model)
    rows = predict_images(model, [tmp_path / "photos", tmp_path / "c.png"], config, "cpu", batch_size=2)
    assert [Path(row["sample"]).name for row in rows] == ["a.png", "b.jpg", "c.png"]
    for row in rows:
        assert row["predicted_name"] in config.data.class_names and 0 < row["score"] <= 1
        assert len(row["top5"]) == 5 and row["top5"][0][0] == row["predicted_name"]
    with pytest.raises(FileNotFoundError, match="no such image"):
        predict_images(model, [tmp_path / "nope.png"], config, "cpu")


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tasks" / "classify.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_cli_help_explains_every_command() -> None:
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    for word in ("train", "evaluate", "predict", "examples:", "key.sub=value"):
        assert word in top.stdout
    train = run_cli("train", "--help")
    assert train.returncode == 0 and "--resume" in train.stdout and "--config" in train.stdout
    assert "example" in train.stdout


def test_cli_unknown_override_exits_2_with_one_line_naming_the_key() -> None:
    result = run_cli("train", "--config", "configs/classification/fashion_mnist_cpu.yaml", "train.epochz=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "train.epochz" in lines[0] and "epochs" in lines[0]
