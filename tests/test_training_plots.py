"""curves.png groups related scalars into panels, skips undefined values, and shows lone points;
detection overlays of small images are enlarged before boxes are drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vit_detection.visualize import draw_detections, save_overlays, upscale_factor
from vit_training.plots import curves_figure, panel_of, plot_curves


def detection_records() -> list[dict]:
    train = [{"split": "train", "step": step, "epoch": 0, "time_s": 0.1 * step, "loss": 3.0 / step,
              "loss_ce": 1.0 / step, "loss_bbox": 2.0 / step, "lr": 1e-3, "grad_norm": 0.5,
              "class_error": 50.0, "cardinality_error": 1.0} for step in (10, 20, 30)]
    evals = [{"split": "eval", "step": step, "epoch": 0, "time_s": 3.0, "AP": 0.1 * i, "AP50": 0.2 * i,
              "AP75": 0.05 * i, "AP_small": -1.0, "AP_medium": 0.1, "AR1": 0.3, "AR10": 0.4, "AR_small": -1.0,
              "loss": math.nan} for i, step in enumerate((15, 30), start=1)]
    return train + evals


def test_related_scalars_share_a_panel_and_sentinels_are_left_out() -> None:
    figure = curves_figure(detection_records())
    panels = {axis.get_title(): axis for axis in figure.axes if axis.get_title()}
    assert list(panels) == ["loss", "COCO AP", "COCO AR", "learning rate", "errors", "grad_norm"]
    labels = {title: sorted(line.get_label() for line in axis.get_lines()) for title, axis in panels.items()}
    assert labels["loss"] == ["train loss", "train loss_bbox", "train loss_ce"]  # eval loss: NaN only
    assert labels["COCO AP"] == ["eval AP", "eval AP50", "eval AP75", "eval AP_medium"]  # AP_small: -1 only
    assert labels["COCO AR"] == ["eval AR1", "eval AR10"]
    assert labels["learning rate"] == ["train"]
    for axis in panels.values():
        for line in axis.get_lines():
            assert -1.0 not in list(line.get_ydata())


def test_lone_points_are_markers_and_other_tasks_group_too(tmp_path: Path) -> None:
    records = [{"split": "eval", "step": 5, "epoch": 0, "time_s": 1.0, "mean_dice": 0.7, "mean_hd95": 4.0,
                "dice/frontal": 0.8, "hd95/frontal": 3.0, "standard/mean_dice": 0.72, "top1": 0.9,
                "ce": 0.3, "dice_loss": 0.2}]
    figure = curves_figure(records)
    panels = {axis.get_title(): axis for axis in figure.axes if axis.get_title()}
    assert list(panels) == ["loss", "Dice", "Dice per class", "HD95", "HD95 per class", "accuracy"]
    assert sorted(line.get_label() for line in panels["Dice"].get_lines()) == ["eval mean_dice",
                                                                               "eval standard/mean_dice"]
    for axis in panels.values():
        for line in axis.get_lines():
            assert len(line.get_xdata()) == 1 and line.get_marker() == "o"
    assert panel_of("top5") == "accuracy" and panel_of("samples") == "samples"
    assert plot_curves(records, tmp_path / "curves.png").is_file()
    assert plot_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_small_overlays_are_enlarged_before_drawing(tmp_path: Path) -> None:
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[:, 10:20, 10:20] = 200
    boxes = torch.tensor([[5.0, 5.0, 20.0, 20.0]])
    prediction = {"boxes": boxes, "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    assert upscale_factor(40, 60) == 7 and upscale_factor(400, 300) == 1
    path = save_overlays([image], [prediction], tmp_path, ["a", "b"])[0]
    written = np.asarray(Image.open(path))
    assert written.shape == (280, 420, 3)  # long side 420 >= 400, a whole factor of 7
    big = image.repeat_interleave(7, 1).repeat_interleave(7, 2)
    expected = draw_detections(big, boxes * 7, torch.tensor([1]), torch.tensor([0.9]), ["a", "b"], 0.5)
    np.testing.assert_array_equal(written, expected.permute(1, 2, 0).numpy())
    assert (written[120:130, 100:110] == 200).all()  # nearest neighbour: the square stays flat
    kept = np.asarray(Image.open(save_overlays([image], [prediction], tmp_path / "raw", ["a", "b"],
                                               min_long_side=0)[0]))
    assert kept.shape == (40, 60, 3)
