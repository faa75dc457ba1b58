"""Export a trained task model to ONNX and to ``torch.export`` (``.pt2``): `export_graph` and the ``export`` command.

Each task describes its inference graph as a `GraphSpec` (``<task>.export.graph_spec``): a module
in eval mode, fp32, on the CPU, whose inputs are the tensors its ``predict`` feeds the network after
preprocessing and whose outputs are what ``predict`` reads (class probabilities, scored boxes in
pixels, per-pixel labels); which input dimensions are dynamic; and example inputs to trace with.
`export_graph` writes

* ``<name>.onnx``: ``torch.onnx.export`` with the dynamo exporter (``torch.export`` then ONNX
  Script, opset `DEFAULT_OPSET`); when it fails, the TorchScript exporter (``dynamo=False``) with
  the same input and output names and dynamic axes. `ExportResult.exporter` says which ran.
* ``<name>.pt2``: ``torch.export.export`` with `torch.export.Dim` for the dynamic dimensions,
  saved by ``torch.export.save``; ``torch.export.load(path).module()`` runs it.
* ``<name>.preprocessing.json`` beside either: the preprocessing the graph expects (it is NOT in
  the graph: resizing, normalisation and padding happen before, as ``predict`` does them) and the
  names, shapes and meaning of the graph's inputs and outputs.

Graphs are exported in fp32 (``predict``'s autocast is not part of them).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .api import Predictor
    from .cli import SubCommand

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "DynamicDim",
    "ExportResult",
    "GraphSpec",
    "cpu_fp32_copy",
    "export_command",
    "export_graph",
    "sidecar_path",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "pt2")
DEFAULT_OPSET = 18  # the dynamo exporter's own default; >= 17 (LayerNormalization as one op)


@dataclass(frozen=True)
class DynamicDim:
    """A dynamic dimension of a graph input: ``multiple * n`` for n in [min, max].

    Attributes:
        name: the symbol (the same name on several inputs is one size, e.g. "batch").
        multiple: the dimension is a multiple of this (e.g. the patch size for image sides).
        min, max: the range of n.
    """

    name: str
    multiple: int = 1
    min: int = 1
    max: int = 4096


@dataclass
class GraphSpec:
    """A task's inference graph and how to export it.

    Attributes:
        module: inputs -> a tuple of output tensors; eval mode, fp32, CPU.
        example_inputs: tensors to trace with (any size within the dynamic ranges; a batch of 2
            avoids the specialisation of size-1 dimensions).
        input_names, output_names: the graph's names, in order.
        dynamic: per input name, {axis: `DynamicDim`}; axes not named are fixed at the example's size.
        inputs, outputs: per name, a one-line description (shape, dtype, meaning) for the JSON.
        preprocessing: what the inputs must have gone through (`vit_training.api.Predictor.preprocessing`).
    """

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: Mapping[str, Mapping[int, DynamicDim]]
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)

    def torch_dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """``dynamic_shapes`` for ``torch.export.export`` / the dynamo ONNX exporter: one dict per input."""
        symbols: dict[str, Any] = {}
        shapes = []
        for name in self.input_names:
            axes = {}
            for axis, dim in self.dynamic.get(name, {}).items():
                if dim.name not in symbols:
                    symbols[dim.name] = torch.export.Dim(dim.name, min=dim.min, max=dim.max)
                axes[axis] = symbols[dim.name] * dim.multiple if dim.multiple != 1 else symbols[dim.name]
            shapes.append(axes)
        return tuple(shapes)

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` for the TorchScript exporter: the inputs' dynamic axes and a batch axis 0 on every output."""
        axes: dict[str, dict[int, str]] = {
            name: {axis: dim.name for axis, dim in self.dynamic.get(name, {}).items()} for name in self.input_names
        }
        batch = next((dims[0] for dims in axes.values() if 0 in dims), None)
        if batch is not None:
            axes.update({name: {0: batch} for name in self.output_names})
        return axes


@dataclass(frozen=True)
class ExportResult:
    """What `export_graph` wrote.

    Attributes:
        path: the graph file (.onnx or .pt2).
        format: "onnx" or "pt2".
        exporter: "dynamo" or "torchscript" (ONNX), "torch.export" (pt2).
        preprocessing: the JSON written beside it.
    """

    path: Path
    format: str
    exporter: str
    preprocessing: Path


def sidecar_path(path: Path) -> Path:
    """The JSON beside an exported graph: ``model.onnx`` -> ``model.preprocessing.json``."""
    return path.with_name(f"{path.stem}.preprocessing.json")


def format_of(path: Path, format: str | None) -> str:
    """The export format: `format`, else the file's suffix.

    Raises:
        ValueError: neither names one of `EXPORT_FORMATS`.
    """
    chosen = format if format is not None else path.suffix.lstrip(".").lower()
    if chosen not in EXPORT_FORMATS:
        raise ValueError(f"{path}: export format {chosen!r} is not one of {EXPORT_FORMATS} "
                         "(give format= or a .onnx / .pt2 file name)")
    return chosen


def _export_onnx(spec: GraphSpec, path: Path, opset: int) -> str:
    """Write the ONNX graph: the dynamo exporter first, the TorchScript exporter when it fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                spec.module, spec.example_inputs, dynamo=True, opset_version=opset, verbose=False,
                input_names=spec.input_names, output_names=spec.output_names,
                dynamic_shapes=spec.torch_dynamic_shapes(),
            )
        program.save(str(path))
        return "dynamo"
    except Exception as error:  # the exporter raises many types; any failure means: try the other one
        logger.warning("the dynamo ONNX exporter failed (%s: %s); using the TorchScript exporter",
                       type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(spec.module, spec.example_inputs, str(path), dynamo=False, opset_version=opset,
                          input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.onnx_dynamic_axes())
    return "torchscript"


@torch.no_grad()
def export_graph(spec: GraphSpec, path: str | Path, format: str | None = None,
                 opset: int = DEFAULT_OPSET) -> ExportResult:
    """Export `spec`'s graph to `path` and write its preprocessing JSON beside it (`sidecar_path`).

    Args:
        spec: the task's graph.
        path: the file to write (its folder is created).
        format: "onnx" or "pt2"; default: from the suffix of `path`.
        opset: the ONNX opset (>= 17).

    Raises:
        ValueError: an unknown format or an opset below 17.
    """
    path = Path(path)
    chosen = format_of(path, format)
    if chosen == "onnx" and opset < 17:
        raise ValueError(f"opset={opset}: the export needs ONNX opset 17 or later")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = spec.module.eval()
    if chosen == "onnx":
        exporter = _export_onnx(spec, path, opset)
    else:
        program = torch.export.export(module, spec.example_inputs, dynamic_shapes=spec.torch_dynamic_shapes())
        torch.export.save(program, str(path))
        exporter = "torch.export"
    description = {
        "format": chosen,
        "exporter": exporter,
        **({"opset": opset} if chosen == "onnx" else {}),
        "precision": "fp32",
        "inputs": {name: spec.inputs.get(name, "") for name in spec.input_names},
        "outputs": {name: spec.outputs.get(name, "") for name in spec.output_names},
        "dynamic": {name: {str(axis): f"{dim.multiple} * {dim.name}" if dim.multiple != 1 else dim.name
                           for axis, dim in axes.items()} for name, axes in spec.dynamic.items()},
        "preprocessing": dict(spec.preprocessing),
    }
    sidecar = sidecar_path(path)
    sidecar.write_text(json.dumps(description, indent=1) + "\n")
    return ExportResult(path, chosen, exporter, sidecar)


def cpu_fp32_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` on the CPU in fp32, in eval mode (the predictor keeps its own)."""
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


# ------------------------------------------------------------------------------------------ the command
def export_command(command: str, predictor: Callable[[], type[Predictor]]) -> SubCommand:
    """The ``export`` subcommand of a task: ``vitasks <command> export --weights RUN [--format ...]``.

    Args:
        command: the task's command name (for help texts).
        predictor: returns the task's `Predictor` class (imported when the command runs).
    """
    from .cli import SubCommand

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--weights", required=True, type=Path,
                            help="the run folder of train (or a save_pretrained folder), or its model.safetensors")
        parser.add_argument("--output", type=Path, default=None,
                            help="folder for model.onnx / model.pt2 and model.preprocessing.json; "
                                 "default: 'export' in the run folder")
        parser.add_argument("--format", nargs="+", choices=EXPORT_FORMATS, default=list(EXPORT_FORMATS),
                            help="what to write (default both)")
        parser.add_argument("--name", default="model", help="file name stem (default model)")
        parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.sub=value",
                            help="a config override (repeatable)")

    def run(args: argparse.Namespace) -> int:
        model = predictor().from_pretrained(args.weights, device="cpu", overrides=args.overrides)
        folder = args.weights if args.weights.is_dir() else args.weights.parent
        output = args.output if args.output is not None else folder / "export"
        for chosen in dict.fromkeys(args.format):
            result = model.export(output / f"{args.name}.{chosen}", format=chosen, opset=args.opset)
            print(f"wrote {result.path} ({result.exporter})")
        print(f"wrote {sidecar_path(output / args.name)}")
        return 0

    return SubCommand(
        name="export", help="export trained weights to ONNX and torch.export (.pt2)", add_arguments=add_arguments,
        run=run,
        description=(
            f"Export the {command} model of a run to ONNX (opset >= 17, dynamic batch) and to torch.export's .pt2, "
            "in fp32, with the preprocessing the graph expects (and the meaning of its inputs and outputs) in "
            "<name>.preprocessing.json beside them."
        ),
    )

