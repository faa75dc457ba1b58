"""Export of each task model (`Predictor.export`, ``vitasks <task> export``) to ONNX and torch.export.

Each tiny model (random weights, built from a shipped config) is exported to both formats; the
ONNX graph runs under onnxruntime and the .pt2 under ``torch.export.load(...).module()``, and both
must equal the eager graph (the `GraphSpec` module ``predict``'s network and post-processing make)
at two batch sizes and, where the image size is dynamic, two image sizes. Tolerance: fp32,
atol 1e-4 (boxes in pixels: 1e-3), integer outputs (labels) exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from accelerate.state import AcceleratorState

from vit_classification import Classifier
from vit_detection import Detector
from vit_segmentation import Segmenter
from vit_training.api import Predictor
from vit_training.cli import discover_tasks, run_task
from vit_training.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ATOL = {"boxes": 1e-3}  # pixels; every other float output: 1e-4

TINY = {
    "classify": (Classifier, "classification/imagefolder.yaml",
                 ["data.class_names=[a,b,c]", "model.backbone.depth=1", "data.input_size=16"]),
    "detect": (Detector, "detection/fashion_scenes_cpu.yaml",
               ["data.class_names=[a,b]", "data.category_ids=[4,9]", "model.backbone.depth=1", "data.train_sizes=[48]",
                "data.eval_size=48", "data.max_size=64", "model.dec_layers=2"]),
    "segment": (Segmenter, "segmentation/nifti_folder.yaml",
                ["data.input_size=[32,32]", "data.root=null", "data.val_fraction=0"]),
}


def tiny_predictor(task: str) -> Predictor:
    cls, path, overrides = TINY[task]
    config = cls.resolve(load_config(cls.config_schema, CONFIGS / path, overrides))
    torch.manual_seed(0)
    return cls(config, cls.build_model(config), device="cpu", precision="no")


def inputs_like(example: tuple[torch.Tensor, ...], batch: int, scale: int) -> tuple[torch.Tensor, ...]:
    """Inputs of `batch` images; the float image input's height times `scale` (sizes follow for detection)."""
    generator = torch.Generator().manual_seed(batch * 10 + scale)
    images = example[0]
    shape = (batch, images.shape[1], images.shape[2] * scale, images.shape[3])
    first = torch.rand(shape, generator=generator)
    rest = tuple(torch.tensor([[shape[2] - 1, shape[3] - 2]] * batch) for _ in example[1:])
    return (first, *rest)


@pytest.mark.parametrize("task", list(TINY))
def test_export_matches_eager(task: str, tmp_path: Path) -> None:
    predictor = tiny_predictor(task)
    spec = predictor.graph_spec()
    onnx_result = predictor.export(tmp_path / "model.onnx")
    pt2_result = predictor.export(tmp_path / "model.pt2")
    assert (onnx_result.format, pt2_result.format, pt2_result.exporter) == ("onnx", "pt2", "torch.export")
    assert onnx_result.exporter in ("dynamo", "torchscript")
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")) >= 17

    description = json.loads((tmp_path / "model.preprocessing.json").read_text())
    assert list(description["inputs"]) == spec.input_names and list(description["outputs"]) == spec.output_names
    assert description["preprocessing"]["class_names"] == predictor.preprocessing()["class_names"]

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    sizes_dynamic = 2 in spec.dynamic[spec.input_names[0]]
    for batch, scale in ((3, 1), (1, 2 if sizes_dynamic else 1)):
        inputs = inputs_like(spec.example_inputs, batch, scale)
        with torch.no_grad():
            expected = spec.module(*inputs)
        from_onnx = session.run(spec.output_names, {name: x.numpy() for name, x in zip(spec.input_names, inputs,
                                                                                     strict=True)})
        from_pt2 = program(*inputs)
        for name, want, got_onnx, got_pt2 in zip(spec.output_names, expected, from_onnx, from_pt2, strict=True):
            assert got_onnx.shape == tuple(want.shape) and tuple(got_pt2.shape) == tuple(want.shape), name
            assert want.shape[0] == batch
            if want.dtype.is_floating_point:
                atol = ATOL.get(name, 1e-4)
                np.testing.assert_allclose(got_onnx, want.numpy(), rtol=1e-4, atol=atol, err_msg=name)
                torch.testing.assert_close(got_pt2.detach(), want, rtol=1e-4, atol=atol, msg=name)
            else:
                np.testing.assert_array_equal(got_onnx, want.numpy(), err_msg=name)
                torch.testing.assert_close(got_pt2, want, rtol=0, atol=0, msg=name)


def test_classifier_graph_gives_predict_probabilities() -> None:
    predictor = tiny_predictor("classify")
    images = torch.rand(2, 3, 16, 16)
    logits, probabilities = predictor.graph_spec().module(images)
    with torch.no_grad():
        torch.testing.assert_close(probabilities, predictor.model(images).softmax(1))
    assert logits.shape == (2, 3)


def test_export_rejects_unknown_formats(tmp_path: Path) -> None:
    predictor = tiny_predictor("classify")
    with pytest.raises(ValueError, match=r"export format 'tflite' is not one of"):
        predictor.export(tmp_path / "model.tflite")
    with pytest.raises(ValueError, match="opset 17 or later"):
        predictor.export(tmp_path / "model.onnx", opset=16)


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    predictor = tiny_predictor("classify")
    predictor.save_pretrained(tmp_path / "saved")
    AcceleratorState._reset_state(reset_partial_state=True)
    status = run_task(discover_tasks()["classify"], ["export", "--weights", str(tmp_path / "saved"),
                                                      "--format", "pt2"], prog="classify.py")
    assert status == 0, capsys.readouterr().err
    folder = tmp_path / "saved" / "export"
    assert sorted(path.name for path in folder.iterdir()) == ["model.preprocessing.json", "model.pt2"]
    images = torch.rand(2, 3, 16, 16)
    logits, _ = torch.export.load(str(folder / "model.pt2")).module()(images)
    with torch.no_grad():
        torch.testing.assert_close(logits, predictor.model(images))
    assert "model.pt2 (torch.export)" in capsys.readouterr().out


def test_push_to_hub_uploads_the_save_pretrained_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: dict[str, object] = {}

    def create_repo(self: object, repo_id: str, **kwargs: object) -> object:
        calls["create_repo"] = repo_id
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self: object, *, repo_id: str, folder_path: str, **kwargs: object) -> str:
        # The folder is temporary: record what it holds while the upload would read it.
        calls["upload"] = (repo_id, sorted(path.name for path in Path(folder_path).iterdir()))
        return "uploaded"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    predictor = tiny_predictor("classify")
    assert predictor.push_to_hub("me/x") == "uploaded"
    predictor.save_pretrained(tmp_path / "saved")
    assert calls == {"create_repo": "me/x", "upload": ("me/x", sorted(p.name for p in (tmp_path / "saved").iterdir()))}
