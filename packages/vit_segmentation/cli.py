"""The segmentation task's command line: ``vitasks segment ...`` (and ``tasks/segment.py``).

Registered in pyproject.toml under the entry-point group ``vitasks.tasks``; `vit_training.cli`
gives it train, evaluate, predict and ``--print-config``; ``prepare`` (demo data) is its own.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vit_training.cli import SubCommand, TaskCommands
from vit_training.export import export_command

from .config import SegmentationConfig
from .predict import add_predict_arguments, run_predict

EXAMPLES = """\
examples:
  vitasks segment prepare --output data/mri_lobes
  vitasks segment train --config mri_lobes_cpu train.epochs=2
  vitasks segment train --config mri_lobes_cpu --resume=latest
  vitasks segment evaluate --weights runs/mri_lobes_cpu eval.metric_mode=standard
  vitasks segment predict --weights runs/mri_lobes_cpu scan.nii.gz slice.png --output predictions/
  accelerate launch tasks/segment.py train --config synapse_r50_vit_b16 \\
      data.root=/data/Synapse model.backbone.pretrained=weights/R50+ViT-B_16.npz

overrides are key.sub=value pairs applied after the file (YAML values: 3, 1e-4, null, [224,96]),
e.g. optim.lr=5e-4 train.batch_size=8 data.input_size=[224,96] eval.metric_mode=standard.
"""


def _build_task(config: SegmentationConfig) -> Any:
    from .task import SegmentationTask

    return SegmentationTask(config)


def _inference_model(task: Any) -> Any:
    from .model import build_transunet

    return build_transunet(task.config.model, load_weights=False)


def headline(metrics: Mapping[str, float]) -> str:
    """``mean Dice 81.20%  mean HD95 3.40`` (the convention of ``eval.metric_mode``)."""
    return f"mean Dice {metrics['mean_dice'] * 100:.2f}%  mean HD95 {metrics['mean_hd95']:.2f}"


def _add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=Path("data/mri_lobes"),
                        help="folder to write (default: data/mri_lobes)")
    parser.add_argument("--templates", type=Path, default=None,
                        help="folder holding ch2.nii.gz, aal.nii.gz and aal.nii.txt; default: the Debian "
                             "package's location")


def _prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare_mri_lobes

    summary = prepare_mri_lobes(args.output, templates_dir=args.templates)
    print(json.dumps(summary, indent=1, default=str))
    print(f"wrote the MRI-lobe data set to {args.output}; train with:\n  vitasks segment train "
          f"--config mri_lobes_cpu data.root={args.output}")
    return 0


PREPARE = SubCommand(
    name="prepare",
    help="write the MRI-lobe demo data set (Synapse and NIfTI layouts)",
    add_arguments=_add_prepare_arguments,
    run=_prepare,
    description=(
        "Build the demo data set from the Debian package mricron-data (apt-get install -y mricron-data): "
        "the ch2 T1 MRI and the AAL atlas grouped into 8 lobes (9 classes with background). One "
        "hemisphere becomes training slices (train_npz/), the other the test volume (test_vol_h5/), "
        "with lists/ and classes.txt, plus imagesTr/ and labelsTr/ as NIfTI."
    ),
)

def _predictor() -> Any:
    from .api import Segmenter

    return Segmenter


EXPORT = export_command("segment", _predictor)

COMMANDS = TaskCommands(
    name="segment",
    description="Prepare data for, train, evaluate and use a TransUNet-style ViT segmenter.",
    config_schema=SegmentationConfig,
    config_folder="segmentation",
    build_task=_build_task,
    headline=headline,
    predict=run_predict,
    add_predict_arguments=add_predict_arguments,
    predict_help="segment NIfTI volumes or PNG/JPEG slices",
    predict_description=(
        "Segment each input with the config the weights were trained with. A NIfTI file (.nii, .nii.gz) is "
        "read as training reads it (data.orientation, data.axis, data.target_spacing, data.channels) and "
        "written back as <case>.nii.gz on the input's own grid, affine and header; a folder (e.g. imagesTs/) "
        "segments every case in it. A PNG/JPEG image is read as grey in [0, 1] and "
        "written as <name>_labels.png (pixel value = class index). Each input also gets <name>_overlay.png."
    ),
    inference_model=_inference_model,
    evaluate_files=("per_case_<mode>.csv", "summary.txt"),
    evaluate_record=lambda task: {"metric_mode": task.config.eval.metric_mode},
    unit="cases",
    extra_commands=(PREPARE, EXPORT),
    examples=EXAMPLES,
)
