"""TransUNet-style medical image segmentation on the shared ViT: prepare, train, evaluate, predict.

Thin on purpose: parse the command line, load the config, build the task, call the engine.
Runs the same with ``python tasks/segment.py ...`` (one process) and under
``accelerate launch tasks/segment.py ...`` (many; evaluation spreads the cases over them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask PyPI on import
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach a hub from here

# After the environment above: the imports below read it.
from vit_segmentation.config import SegmentationConfig  # noqa: E402
from vit_training.cli import (  # noqa: E402
    CONFIG_FILE,
    add_overrides,
    configure_logging,
    exit_status,
    load_run_config,
    paragraph,
    train_overrides,
    weights_file,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

EXAMPLES = """\
examples:
  python tasks/segment.py prepare --output data/mri_lobes
  python tasks/segment.py train --config configs/segmentation/mri_lobes_cpu.yaml train.epochs=2
  python tasks/segment.py train --config configs/segmentation/mri_lobes_cpu.yaml --resume=latest
  python tasks/segment.py evaluate --weights runs/mri_lobes_cpu
  python tasks/segment.py predict --weights runs/mri_lobes_cpu scan.nii.gz slice.png --output predictions/
  accelerate launch tasks/segment.py train --config configs/segmentation/synapse_r50_vit_b16.yaml \\
      data.root=/data/Synapse model.backbone.pretrained=weights/R50+ViT-B_16.npz

overrides are key.sub=value pairs applied after the file (YAML values: 3, 1e-4, null, [224,96]),
e.g. optim.lr=5e-4 train.batch_size=8 data.input_size=[224,96] eval.metric_mode=standard.
"""


def _add_weights_and_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", required=True, type=Path,
        help="model.safetensors written by train, or the run folder holding it",
    )
    parser.add_argument(
        "--config", type=Path, default=None,
        help=f"YAML config; default: the {CONFIG_FILE} saved beside the weights",
    )


def _load_config(args: argparse.Namespace, overrides: Sequence[str]) -> SegmentationConfig:
    """The config of --config, else the run's config.yaml beside --weights."""
    return load_run_config(SegmentationConfig, args.config, getattr(args, "weights", None), overrides)


def build_parser() -> argparse.ArgumentParser:
    """The command line: `prepare`, `train`, `evaluate` and `predict` subcommands."""
    parser = argparse.ArgumentParser(
        prog="segment.py",
        description="Prepare data for, train, evaluate and use a TransUNet-style ViT segmenter (vitasks).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prepare,train,evaluate,predict}")

    prepare = commands.add_parser(
        "prepare",
        help="write the MRI-lobe demo data set (Synapse and NIfTI layouts)",
        description=paragraph(
            "Build the demo data set from the Debian package mricron-data (apt-get install -y mricron-data): "
            "the ch2 T1 MRI and the AAL atlas grouped into 8 lobes (9 classes with background). One "
            "hemisphere becomes training slices (train_npz/), the other the test volume (test_vol_h5/), "
            "with lists/ and classes.txt, plus imagesTr/ and labelsTr/ as NIfTI."
        ),
        epilog="example:\n  python tasks/segment.py prepare --output data/mri_lobes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("--output", type=Path, default=Path("data/mri_lobes"),
                         help="folder to write (default: data/mri_lobes)")
    prepare.add_argument("--templates", type=Path, default=None,
                         help="folder holding ch2.nii.gz, aal.nii.gz and aal.nii.txt; default: the Debian "
                              "package's location")

    train = commands.add_parser(
        "train",
        help="train a segmenter from a config",
        description=paragraph(
            "Train on the config's slices and evaluate on its volumes. The run folder (train.output_dir) "
            "gets config.yaml (the resolved config), checkpoints/, the metric logs and curves, "
            "per_case_<mode>.csv, summary.txt, overlays.png and model.safetensors."
        ),
        epilog="example:\n  python tasks/segment.py train --config configs/segmentation/mri_lobes_cpu.yaml "
               "train.epochs=2 train.output_dir=runs/try",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", required=True, type=Path, help="YAML file of config values")
    train.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="PATH|latest",
        help="continue a run exactly (sets train.resume): a checkpoint folder, or 'latest' (also what "
             "--resume alone means) for the newest checkpoint in train.output_dir",
    )
    add_overrides(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate trained weights on the evaluation volumes",
        description=paragraph(
            "Predict every evaluation volume slice by slice (TransUNet's procedure) and write "
            "per_case_<mode>.csv (per-class Dice and HD95 of every case), summary.txt (the tables) and "
            "metrics.json to --output. eval.metric_mode chooses the reported convention: 'transunet' "
            "(HD95 in voxels, TransUNet's empty-mask rules) or 'standard' (HD95 in mm, NaN/inf for empty "
            "masks). Works under accelerate launch (every case counted once)."
        ),
        epilog="example:\n  python tasks/segment.py evaluate --weights runs/mri_lobes_cpu "
               "eval.metric_mode=standard",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_weights_and_config(evaluate)
    evaluate.add_argument("--output", type=Path, default=None,
                          help="folder for the result files; default: 'eval' beside the weights")
    add_overrides(evaluate)

    predict = commands.add_parser(
        "predict",
        help="segment NIfTI volumes or PNG/JPEG slices",
        description=paragraph(
            "Segment each input with the config the weights were trained with. A NIfTI file (.nii, "
            ".nii.gz) is normalised as data.modality says (CT window or MR percentiles), sliced along "
            "data.axis and written back as <name>_labels.nii.gz with the input's affine. A PNG/JPEG image "
            "is read as grey in [0, 1] and written as <name>_labels.png (pixel value = class index). "
            "Each input also gets <name>_overlay.png."
        ),
        epilog="example:\n  python tasks/segment.py predict --weights runs/mri_lobes_cpu scan.nii.gz "
               "--output out/ --set data.modality=mr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_weights_and_config(predict)
    predict.add_argument("inputs", nargs="+", type=Path, metavar="FILE",
                         help="NIfTI volumes and/or PNG/JPEG images")
    predict.add_argument("--output", type=Path, default=Path("predictions"),
                         help="folder for the label maps and overlays (default: predictions)")
    predict.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    predict.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="key.sub=value",
        help="a config override (repeatable), e.g. --set data.modality=mr --set eval.slice_batch_size=32",
    )
    return parser


def _headline(metrics: dict[str, float]) -> str:
    return f"mean Dice {metrics['mean_dice'] * 100:.2f}%  mean HD95 {metrics['mean_hd95']:.2f}"


def cmd_prepare(args: argparse.Namespace) -> int:
    from vit_segmentation.prepare import prepare_mri_lobes

    summary = prepare_mri_lobes(args.output, templates_dir=args.templates)
    print(json.dumps(summary, indent=1, default=str))
    print(f"wrote the MRI-lobe data set to {args.output}; train with:\n  python tasks/segment.py train "
          f"--config configs/segmentation/mri_lobes_cpu.yaml data.root={args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from vit_segmentation.task import SegmentationTask
    from vit_training.loop import fit

    overrides = train_overrides(args)
    task = SegmentationTask(_load_config(args, overrides))
    result = fit(task, task.config)
    if PartialState().is_main_process:
        print(f"run folder: {result.output_dir}")
        print(f"weights:    {result.weights_path}")
        if result.metrics:
            print(f"evaluation: {_headline(result.metrics)} ({task.config.eval.metric_mode} convention; "
                  f"tables in {result.output_dir / 'summary.txt'})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from vit_segmentation.model import build_transunet
    from vit_segmentation.task import SUMMARY_FILE, SegmentationTask
    from vit_training.loop import build_accelerator, load_weights_for_inference

    weights = weights_file(args.weights)
    task = SegmentationTask(_load_config(args, args.overrides))
    output_dir = args.output if args.output is not None else weights.parent / "eval"
    accelerator = build_accelerator(task.config.train)
    model = load_weights_for_inference(build_transunet(task.config.model, load_weights=False),
                                       weights)
    eval_set = task.build_eval_dataset()
    if eval_set is None:
        raise FileNotFoundError("the config names no evaluation cases (NIfTI: data.eval_cases or data.eval_root)")
    loader = DataLoader(eval_set, batch_size=task.eval_batch_size, shuffle=False,
                        num_workers=task.config.train.num_workers, collate_fn=task.collate_fn(False))
    model, loader = accelerator.prepare(model, loader)
    model.eval()
    with accelerator.autocast():
        metrics = task.evaluate(model, loader, accelerator, output_dir)
    if accelerator.is_main_process:
        record = {"weights": str(weights), "cases": len(eval_set), "metric_mode": task.config.eval.metric_mode,
                  **metrics}
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
        print((output_dir / SUMMARY_FILE).read_text(), end="")
        print(f"{len(eval_set)} cases: {_headline(metrics)}")
        print(f"wrote per_case_*.csv, {SUMMARY_FILE} and metrics.json to {output_dir}")
    accelerator.wait_for_everyone()
    return 0


def _input_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    nifti, images = ", ".join(NIFTI_SUFFIXES), ", ".join(IMAGE_SUFFIXES)
    raise ValueError(f"{path}: not a NIfTI ({nifti}) or image ({images}) file")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_grey_image(path: Path):
    """A PNG/JPEG/... file as a float32 (H, W) grey slice in [0, 1] (8-bit and 16-bit images)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float32)
                return array / 65535.0 if image.mode.startswith("I;16") else array / max(float(array.max()), 1.0)
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from error


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from accelerate import PartialState
    from PIL import Image

    from vit_segmentation.data import read_nifti_volume, write_nifti_labels
    from vit_segmentation.model import build_transunet
    from vit_segmentation.task import overlay_slice_indices, predict_volume, resolve_config, save_overlays
    from vit_training.loop import load_weights_for_inference

    config = resolve_config(_load_config(args, args.overrides))
    kinds = [_input_kind(path) for path in args.inputs]  # fail before loading anything
    weights = weights_file(args.weights)
    model = load_weights_for_inference(build_transunet(config.model, load_weights=False),
                                       weights)
    device = torch.device("cpu") if args.cpu else PartialState().device
    model = model.to(device).eval()
    data, names = config.data, list(config.data.class_names)
    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    for path, kind in zip(args.inputs, kinds, strict=True):
        stem = _stem(path)
        if kind == "nifti":
            volume = read_nifti_volume(path, None, modality=data.modality, axis=data.axis,
                                       ct_window=tuple(data.ct_window), mr_percentiles=tuple(data.mr_percentiles))
            labels = predict_volume(model, volume.image, data.input_size, data.interpolation,
                                    config.eval.slice_batch_size)
            target = output / f"{stem}_labels.nii.gz"
            write_nifti_labels(target, labels, volume)
            indices = overlay_slice_indices(labels, max(config.eval.overlay_slices, 1))
            save_overlays(output / f"{stem}_overlay.png", volume.image[indices], labels[indices], names,
                          titles=[f"{stem} slice {index}" for index in indices])
        else:
            image = read_grey_image(path)
            labels = predict_volume(model, image, data.input_size, data.interpolation)
            target = output / f"{stem}_labels.png"
            Image.fromarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)).save(target)
            save_overlays(output / f"{stem}_overlay.png", image[None], labels[None], names, titles=[stem])
        present = np.unique(labels)
        classes = ", ".join(names[int(value) - 1] for value in present if value > 0) or "background only"
        print(f"{path} -> {target} ({classes})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (2 for a config error, 1 for missing or bad files)."""
    args = build_parser().parse_args(argv)
    from vit_training.config import ConfigError

    configure_logging("vit_segmentation")
    commands = {"prepare": cmd_prepare, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
    try:
        return commands[args.command](args)
    except ConfigError as error:
        print(f"segment.py {args.command}: config error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as error:
        # Missing or unreadable data and weights: the one-line message names the file and what was
        # expected; a traceback would add nothing.
        print(f"segment.py {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(exit_status(main()))
