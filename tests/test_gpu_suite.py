"""benchmarks/gpu_suite.py --smoke: the GPU suite's code paths on tiny models on the CPU, so it cannot rot
between GPU loans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_cases import SMOKE_CASES, finite_positive  # noqa: E402

MEASURED = ("images_per_s", "step_ms_median", "step_ms_p10", "step_ms_p90", "first_step_s", "peak_memory_mib",
            "flops_per_image", "achieved_tflops", "mfu_measured")


def test_smoke_suite_writes_every_case_with_finite_positive_numbers(tmp_path: Path) -> None:
    output = tmp_path / "smoke.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_suite.py"), "--smoke", "--output", str(output)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(output.read_text())
    rows = result["rows"]
    assert {row["case"] for row in rows} == {case.name for case in SMOKE_CASES}
    assert any(row["compile"] for row in rows) and any(not row["compile"] for row in rows)
    for row in rows:
        for key in MEASURED:
            assert finite_positive(row[key]), (row["case"], row["compile"], key, row[key])
        assert row["step_ms_p10"] <= row["step_ms_median"] <= row["step_ms_p90"]
        if not row["compile"]:
            assert finite_positive(row["syncs_per_step"]), row
    assert finite_positive(result["meta"]["peak_tflops_measured"])
    assert "MFU" in completed.stdout and "wrote" in completed.stdout


def test_nominal_peaks_by_device_name() -> None:
    from gpu_suite import nominal_peak_tflops

    assert nominal_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert nominal_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert nominal_peak_tflops("NVIDIA H200") == 989.4
    assert nominal_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert nominal_peak_tflops("NVIDIA L4") == 121.0
    assert nominal_peak_tflops("NVIDIA L40S") == 362.0
    assert nominal_peak_tflops("Some Future GPU") is None
