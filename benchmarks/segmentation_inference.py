"""Segmentation inference compared on one trained run: resize vs sliding windows vs test-time flips.

Loads a trained run folder (``config.yaml`` + ``model.safetensors``, as ``vitasks segment train``
writes it), reads its evaluation volumes with the task's own code (`SegmentationTask.build_eval_dataset`),
and predicts every volume with the same weights in each inference setting:

  * ``resize``: every slice resized to ``data.input_size``, labels resized back (TransUNet's way,
    the task's default);
  * ``resize + TTA``: the same, softmax averaged with the flipped slices (``--flips``);
  * ``sliding_window``: windows of ``data.input_size`` at the slice's own resolution, overlap
    ``--overlap``, Gaussian blending (`vit_segmentation.inference`);
  * ``sliding_window + TTA``;
  * ``+lcc`` after any of them (``resize+tta+lcc``): each foreground class kept as its largest
    3D connected component (``eval.largest_component: true``), timed with the prediction;
  * ``+prob`` after ``resize`` (``resize+prob+tta``): the softmax resized back bilinearly and the
    argmax taken at the slice's own size (``eval.resize_back: probabilities``) instead of the
    labels resized back with nearest neighbours.

Dice and HD95 are computed at the volumes' native resolution (the label grid), per case and class
(`metrics.case_metrics`), in the TransUNet convention (HD95 in voxels) and the standard one (HD95
in mm, MONAI's directed max), and averaged over cases and the foreground classes. Seconds per
volume is the prediction alone (reading and metrics excluded), fp32, ``--threads`` torch threads.

Usage:
    vitasks segment prepare --output data/mri_lobes
    python tasks/segment.py train --config configs/segmentation/mri_lobes_cpu.yaml \\
        train.output_dir=runs/seg_inference_weights --overwrite
    python benchmarks/segmentation_inference.py --run runs/seg_inference_weights
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vit_segmentation import Segmenter  # noqa: E402
from vit_segmentation.metrics import case_metrics, summarize  # noqa: E402
from vit_segmentation.task import SegmentationTask, predict_volume  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder (config.yaml + model.safetensors)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    parser.add_argument("--flips", nargs="+", default=["height"],
                        help="TTA flips: axis names (height, width) or 'height+width' for both at once "
                             "(default: height, the flip the demo recipe trains with)")
    parser.add_argument("--window-batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--modes", nargs="+",
                        default=["resize", "resize+tta", "resize+tta+lcc", "sliding_window", "sliding_window+tta"],
                        help="settings to compare, in order: resize or sliding_window, then +tta and/or +lcc")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    segmenter = Segmenter.from_pretrained(args.run, device="cpu")
    task = SegmentationTask(segmenter.config)
    config = task.config
    dataset = task.build_eval_dataset()
    if dataset is None or len(dataset) == 0:
        print(f"{args.run}: its config has no evaluation volumes", file=sys.stderr)
        return 1
    volumes = [dataset[index] for index in range(len(dataset))]
    model = segmenter.model.float().eval()
    flips = [entry.split("+") if "+" in entry else entry for entry in args.flips]
    names = task.class_names
    print(f"run {args.run}: {len(volumes)} evaluation volume(s) "
          f"{', '.join(f'{v.case} {tuple(v.image.shape)}' for v in volumes)}; window = data.input_size "
          f"{tuple(config.data.input_size)}; TTA flips {args.flips}; {args.threads} thread(s), fp32")

    rows = []
    for mode in args.modes:
        base, *extras = mode.split("+")
        if (base not in ("resize", "sliding_window") or not set(extras) <= {"tta", "lcc", "prob"}
                or (base == "sliding_window" and "prob" in extras)):
            print(f"--modes: unknown setting {mode!r}, expected resize or sliding_window, then +tta and/or +lcc, "
                  "+prob after resize only (e.g. resize+prob+tta+lcc)", file=sys.stderr)
            return 2
        options = {"inference": base, "resize_back": "probabilities" if "prob" in extras else "labels",
                   "window_overlap": args.overlap, "window_batch_size": args.window_batch_size,
                   "tta_flips": flips if "tta" in extras else False, "largest_component": "lcc" in extras}
        seconds, results = [], {"transunet": ([], []), "standard": ([], [])}
        for volume in volumes:
            start = time.perf_counter()
            labels = predict_volume(model, volume.image, config.data.input_size, config.data.interpolation,
                                    config.eval.slice_batch_size, context_slices=config.data.context_slices,
                                    **options)
            seconds.append(time.perf_counter() - start)
            for metric_mode, (dice_rows, hd_rows) in results.items():
                dice, hd95 = case_metrics(labels, volume.label, task.num_classes, mode=metric_mode,
                                          spacing=volume.spacing)
                dice_rows.append(dice)
                hd_rows.append(hd95)
        summaries = {m: summarize(np.array(d), np.array(h), names, m) for m, (d, h) in results.items()}
        rows.append((mode, summaries, float(np.mean(seconds))))
        print(f"  {mode}: done ({np.mean(seconds):.1f} s per volume)", flush=True)

    print()
    header = (f"{'inference':<28}{'mean Dice':>10}{'HD95 (vox)':>12}{'std Dice':>10}{'HD95 (mm)':>11}"
              f"{'s / volume':>12}")
    print(header)
    print("-" * len(header))
    for mode, summaries, seconds in rows:
        label = mode.replace("+prob", " + prob").replace("+tta", " + TTA").replace("+lcc", " + LCC") + (
            f" ({args.overlap:g})" if mode.startswith("sliding") else "")
        t, s = summaries["transunet"], summaries["standard"]
        print(f"{label:<28}{t['mean_dice']:>10.4f}{t['mean_hd95']:>12.2f}{s['mean_dice']:>10.4f}"
              f"{s['mean_hd95']:>11.2f}{seconds:>12.1f}")
    print()
    print("per class Dice (transunet convention):")
    print(f"{'inference':<28}" + "".join(f"{n[:10]:>11}" for n in names))
    for mode, summaries, _ in rows:
        print(f"{mode:<28}" + "".join(f"{summaries['transunet'][f'dice/{n}']:>11.4f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
