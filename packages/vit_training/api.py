"""The Python API's shared base: `Predictor`, a trained model with its config, device and precision.

Each task subclasses it (``vit_classification.Classifier``, ``vit_detection.Detector``,
``vit_segmentation.Segmenter``) with how to build its network, describe its preprocessing and
predict. `Predictor` loads a run folder of ``vitasks <task> train`` (config.yaml +
model.safetensors) or a folder of `Predictor.save_pretrained`, and saves one that follows the
Hugging Face Hub conventions (it is a `huggingface_hub.ModelHubMixin`, so ``push_to_hub`` works):
model.safetensors, config.yaml (as ``train`` writes it) and config.json, preprocessing.json, the
last evaluation (eval_metrics.json) and a model card (README.md). Predictions run at the precision
of ``vitasks <task> predict`` (`vit_training.cli.predict_precision`), through the same functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelHubMixin
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from .cli import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    inference_autocast,
    inference_device,
    predict_precision,
    weights_file,
)
from .config import config_to_dict, load_config, save_config
from .export import DEFAULT_OPSET, ExportResult, GraphSpec, export_graph
from .loop import load_weights_for_inference

__all__ = [
    "CONFIG_JSON",
    "EVAL_METRICS_FILE",
    "PREPROCESSING_FILE",
    "ImageInput",
    "Predictor",
    "as_uint8_image",
    "last_eval_metrics",
]

CONFIG_JSON = "config.json"  # the Hub's config file name: the same config as config.yaml
PREPROCESSING_FILE = "preprocessing.json"
EVAL_METRICS_FILE = "eval_metrics.json"  # the last evaluation of the run the weights come from

# An input of `predict`: a file path, a PIL image, a numpy array or a torch tensor.
ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

PredictorT = TypeVar("PredictorT", bound="Predictor")


def last_eval_metrics(folder: Path) -> dict[str, Any] | None:
    """The last ``"split": "eval"`` record of the run's metrics.jsonl, else a saved eval_metrics.json, else None."""
    records = folder / "metrics.jsonl"
    if records.is_file():
        last = None
        for line in records.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("split") == "eval":
                    last = record
        if last is not None:
            return {key: value for key, value in last.items() if key not in ("split", "time_s")}
    saved = folder / EVAL_METRICS_FILE
    if saved.is_file():
        return json.loads(saved.read_text())
    return None


def as_uint8_image(item: np.ndarray | torch.Tensor, what: str = "image") -> np.ndarray:
    """An in-memory image as uint8 (H, W, C), the layout the image readers return.

    Args:
        item: numpy (H, W), (H, W, 1) or (H, W, 3), or a torch tensor (H, W), (1, H, W) or
            (3, H, W) (torchvision's channel-first layout); uint8 values 0..255, or floats in
            [0, 1] (rounded to 0..255, as an 8-bit file would store them).
        what: names the input in errors.

    Raises:
        ValueError: another shape or dtype (one line naming it).
    """
    if isinstance(item, torch.Tensor):
        array = item.detach().cpu().numpy()
        if array.ndim == 3:
            array = np.moveaxis(array, 0, -1)
    else:
        array = np.asarray(item)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"{what}: expected an image of shape (H, W), (H, W, 1) or (H, W, 3) "
                         f"(a tensor (C, H, W)), got {tuple(np.shape(item))}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        return np.ascontiguousarray(np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8))
    raise ValueError(f"{what}: expected uint8 or float values in [0, 1], got dtype {array.dtype}")


def _is_local_path(name: str) -> bool:
    """Whether `name` can only mean a local path (never a Hub repository id ``owner/name``)."""
    path = Path(name)
    return path.is_absolute() or name.startswith((".", "~")) or len(path.parts) != 2 or path.suffix != ""


class Predictor(ModelHubMixin, library_name="vitasks", tags=["vitasks", "vision-transformer"]):
    """A trained model ready to predict: its resolved config, network, device and precision.

    Subclasses set `config_schema` and `command` and implement `build_model`, `resolve`,
    `preprocessing` and their own ``predict``.

    Attributes:
        config: the resolved task config the weights were trained with.
        model: the network, in eval mode on `device`.
        device: where it runs.
        precision: the autocast precision ("no", "bf16", "fp16"): by default what
            ``vitasks <task> predict`` and ``evaluate`` use on this device.
        metrics: the last evaluation of the run (step, epoch and the task's metrics), or None.
    """

    config_schema: ClassVar[type] = object
    command: ClassVar[str] = ""  # the CLI task name, e.g. "classify"
    pipeline_tag: ClassVar[str] = ""  # the Hub's task name, e.g. "image-classification"
    example_input: ClassVar[str] = "image.png"  # what the model card's usage example predicts

    def __init__(self, config: Any, model: nn.Module, device: torch.device | str | None = None,
                 precision: str | None = None, metrics: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else inference_device(cpu=False)
        self.precision = predict_precision(config, self.device, precision)
        self.model = model.to(self.device).eval()
        self.metrics = dict(metrics) if metrics is not None else None
        # The config the Hub mixin writes as config.json: plain data (`_save_pretrained` writes it first).
        self._hub_mixin_config = config_to_dict(config)

    # ------------------------------------------------------------------ what a task provides
    @classmethod
    def build_model(cls, config: Any) -> nn.Module:
        """The network of a resolved `config`, without fetching the pretrained weights the export replaces."""
        raise NotImplementedError

    @classmethod
    def resolve(cls, config: Any) -> Any:
        """The config with what it leaves to the data filled in (the task's ``resolve_config``)."""
        return config

    def preprocessing(self) -> dict[str, Any]:
        """How inputs are prepared (sizes, normalisation, ...): written as preprocessing.json."""
        raise NotImplementedError

    def graph_spec(self) -> GraphSpec:
        """The inference graph `export` writes: the network and the post-processing ``predict`` applies to it.

        Each task builds it in its ``export`` module (fp32, on the CPU, from a copy of `model`).
        """
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:
        """The class names the run's config holds (every task resolves them into ``data.class_names``).

        Classification and detection: index = label. Segmentation: the foreground classes, label
        k + 1 is name k (label 0 is the background).
        """
        return list(self.config.data.class_names or [])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls: type[PredictorT],
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        precision: str | None = None,
        overrides: Sequence[str] = (),
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> PredictorT:
        """Load a run folder, a `save_pretrained` folder, its model.safetensors, or a Hub repository id.

        A local folder or file is read as it is: the Hub is never asked. Only a name of the form
        ``owner/name`` that is not a local path is downloaded (honouring ``HF_HUB_OFFLINE``).

        Args:
            pretrained_model_name_or_path: the folder (config.yaml or config.json beside
                model.safetensors), the weights file in it, or a Hub repository id.
            device: where to run; default: a GPU when visible (as ``predict``), else the CPU.
            precision: "no", "bf16", "fp16" or "auto"; default: ``train.mixed_precision`` resolved
                for the device, as ``predict`` and ``evaluate`` do.
            overrides: ``key.sub=value`` config overrides, as ``predict --set``.
            revision, cache_dir, force_download, token, local_files_only: for a Hub download.

        Raises:
            FileNotFoundError: no config or weights in the folder, or no such local path.
            ConfigError: the config does not fit the task's schema.
            ValueError: the weights do not fit the network the config builds.
        """
        name = os.fspath(pretrained_model_name_or_path)
        path = Path(name).expanduser()
        if path.is_file():
            path = path.parent
        elif not path.is_dir():
            if _is_local_path(name):
                raise FileNotFoundError(f"{name}: no such folder (give a run folder of vitasks {cls.command} train "
                                        f"or a folder written by save_pretrained)")
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(repo_id=name, revision=revision, cache_dir=cache_dir,
                                          force_download=force_download, token=token,
                                          local_files_only=local_files_only))
        return cls._from_pretrained(model_id=str(path), revision=revision, cache_dir=cache_dir,
                                    force_download=force_download, local_files_only=local_files_only, token=token,
                                    device=device, precision=precision, overrides=overrides)

    @classmethod
    def _from_pretrained(cls: type[PredictorT], *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         device: torch.device | str | None = None, precision: str | None = None,
                         overrides: Sequence[str] = (), **_: Any) -> PredictorT:
        """Build the predictor from a local folder (`model_id`)."""
        folder = Path(model_id)
        config_path = next((folder / name for name in (CONFIG_FILE, CONFIG_JSON) if (folder / name).is_file()), None)
        if config_path is None:
            raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} or {CONFIG_JSON} (give a run folder of vitasks "
                                    f"{cls.command} train or a folder written by save_pretrained)")
        # JSON is YAML: config.json loads through the same schema checks as config.yaml.
        config = cls.resolve(load_config(cls.config_schema, config_path, overrides))
        model = load_weights_for_inference(cls.build_model(config), weights_file(folder))
        return cls(config, model, device=device, precision=precision, metrics=last_eval_metrics(folder))

    # ------------------------------------------------------------------ saving
    def _save_pretrained(self, save_directory: Path) -> None:
        """Write model.safetensors, config.yaml, config.json, preprocessing.json, eval_metrics.json and README.md."""
        state = {key: value.detach().cpu().contiguous() for key, value in self.model.state_dict().items()}
        save_file(state, str(save_directory / WEIGHTS_FILE))
        save_config(self.config, save_directory / CONFIG_FILE)
        (save_directory / CONFIG_JSON).write_text(json.dumps(config_to_dict(self.config), indent=1) + "\n")
        (save_directory / PREPROCESSING_FILE).write_text(json.dumps(self.preprocessing(), indent=1) + "\n")
        if self.metrics is not None:
            (save_directory / EVAL_METRICS_FILE).write_text(json.dumps(self.metrics, indent=1) + "\n")
        self.generate_model_card().save(save_directory / "README.md")

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The model card: task, classes, data, the last evaluation, the training command and usage."""
        return ModelCard(self.model_card_text())

    def model_card_text(self) -> str:
        """The model card as Markdown with the Hub's YAML metadata."""
        title = type(self).__name__
        names = self.class_names
        data = config_to_dict(self.config).get("data", {})
        sources = {key: value for key, value in data.items() if value not in (None, [], "")
                   and (key == "format" or key.endswith(("root", "dir", "json", "list", "cases")))}
        lines = [
            "---",
            "library_name: vitasks",
            f"pipeline_tag: {self.pipeline_tag}",
            "tags:",
            "- vitasks",
            "- vision-transformer",
            f"- {self.pipeline_tag}",
            "---",
            "",
            f"# vitasks {title}",
            "",
            f"A `{self.command}` model of vitasks ({self.pipeline_tag}), a ViT backbone "
            f"(`model.backbone.preset: {self.config.model.backbone.preset}`).",
            "",
            "## Classes",
            "",
            f"{len(names)}: " + ", ".join(f"`{name}`" for name in names),
            "",
            "## Data",
            "",
            *([f"- `data.{key}`: `{value}`" for key, value in sources.items()] or ["Not recorded in the config."]),
            "",
            "## Evaluation",
            "",
        ]
        if self.metrics:
            lines += ["The last evaluation of the training run:", "", "| metric | value |", "| --- | --- |"]
            lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
                      for key, value in self.metrics.items()]
        else:
            lines.append("No evaluation was recorded with these weights.")
        lines += [
            "",
            "## Training",
            "",
            "The path of the config file the run started from is not recorded; config.yaml in this folder is "
            "that config resolved (every value, including the ones read from the data), so this retrains it:",
            "",
            "```bash",
            f"vitasks {self.command} train --config config.yaml train.output_dir=runs/retrain",
            "```",
            "",
            "## Use",
            "",
            "```py",
            f"from {type(self).__module__.split('.')[0]} import {title}",
            f'model = {title}.from_pretrained("path/to/this/folder")',
            f'result = model.predict("{self.example_input}")',
            "```",
            "",
            f"The preprocessing is in {PREPROCESSING_FILE}; the command line equivalent is "
            f"`vitasks {self.command} predict --weights path/to/this/folder ...`.",
            "",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ exporting
    def export(self, path: str | os.PathLike, format: str | None = None, opset: int = DEFAULT_OPSET) -> ExportResult:
        """Export the model to ONNX or ``torch.export`` (``.pt2``), with ``<stem>.preprocessing.json`` beside it.

        The graph (`graph_spec`) takes preprocessed tensors, as ``predict`` feeds the network, and
        returns what ``predict`` reads from it; the JSON names its inputs and outputs and the
        preprocessing (not part of the graph). The batch size is dynamic. fp32, whatever `precision`.
        ONNX is written by the dynamo exporter (opset `opset`, >= 17), or by the TorchScript
        exporter when the dynamo exporter fails (`ExportResult.exporter` says which);
        ``torch.export.load(path).module()`` runs a .pt2. See `vit_training.export`.

        Args:
            path: the file to write, e.g. ``model.onnx`` or ``model.pt2``.
            format: "onnx" or "pt2"; default: from the suffix of `path`.
            opset: the ONNX opset.

        Raises:
            ValueError: an unknown format or an opset below 17.
        """
        return export_graph(self.graph_spec(), Path(path), format, opset)

    # ------------------------------------------------------------------ predicting
    def autocast(self) -> Any:
        """The autocast context ``predict`` runs under (`precision` on `device`)."""
        return inference_autocast(self.precision, self.device)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(classes={len(self.class_names)}, device={self.device}, "
                f"precision={self.precision!r})")
