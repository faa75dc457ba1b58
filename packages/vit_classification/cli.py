"""The classification task's command line: ``vitasks classify ...`` (and ``tasks/classify.py``).

Registered in pyproject.toml under the entry-point group ``vitasks.tasks``; `vit_training.cli`
gives it train, evaluate, predict and ``--print-config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vit_training.cli import TaskCommands
from vit_training.export import export_command

from .config import ClassificationConfig
from .predict import add_predict_arguments, run_predict

EXAMPLES = """\
examples:
  vitasks classify train --config fashion_mnist_cpu train.epochs=2
  vitasks classify train --config fashion_mnist_cpu --resume=latest
  vitasks classify evaluate --weights runs/fashion_mnist_cpu
  vitasks classify predict --weights runs/fashion_mnist_cpu shirt.png photos/ --output predictions.csv
  accelerate launch tasks/classify.py train --config imagenet_vit_b16_finetune data.root=/data/imagenet

overrides are key.sub=value pairs applied after the file (YAML values: 3, 1e-4, null, [0.9,0.95]),
e.g. optim.lr=2e-3 train.batch_size=64 data.num_train_samples=5000.
"""


def _build_task(config: ClassificationConfig) -> Any:
    from .task import ClassificationTask

    return ClassificationTask(config)


def _inference_model(task: Any) -> Any:
    from .model import build_classifier

    return build_classifier(task.config.model, load_weights=False)


def headline(metrics: Mapping[str, float]) -> str:
    """``top1 0.9012  top5 0.9987  mean_class_acc 0.9010  loss 0.2870``."""
    return "  ".join(f"{key} {metrics[key]:.4f}" for key in ("top1", "top5", "mean_class_acc", "loss") if key in metrics)


def _evaluate_options(output_dir: Path) -> dict[str, Any]:
    return {"predictions_path": output_dir / "predictions.csv"}


def _predictor() -> Any:
    from .api import Classifier

    return Classifier


EXPORT = export_command("classify", _predictor)

COMMANDS = TaskCommands(
    name="classify",
    description="Train, evaluate and use a ViT image classifier.",
    config_schema=ClassificationConfig,
    config_folder="classification",
    build_task=_build_task,
    headline=headline,
    predict=run_predict,
    add_predict_arguments=add_predict_arguments,
    predict_help="classify image files or folders",
    predict_description=(
        "Print the predicted label and its probability for each image (folders are searched recursively), "
        "using the evaluation transform of the config the weights were trained with."
    ),
    inference_model=_inference_model,
    evaluate_files=("predictions.csv", "confusion_matrix.png", "per_class_accuracy.json"),
    evaluate_options=_evaluate_options,
    unit="images",
    extra_commands=(EXPORT,),
    examples=EXAMPLES,
)
