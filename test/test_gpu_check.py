"""bench/gpu_check.sh dry-run on the CPU (tiny model, one call per measurement), so the GPU script cannot rot."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out, table = tmp_path / "check.json", tmp_path / "check.md"
    argv = [str(ROOT / "bench" / "gpu_check.sh"), "--model", "tiny", "--device", "cpu", "--input-size", "96x128",
            "--iters", "1", "--warmup", "0", "--frames", "2", "--no-compile", "--out", str(out), "--markdown", str(table)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["backend"], r["precision"]): r for r in result["rows"]}
    for precision in ("fp32", "fp16", "bf16"):
        row = rows[("eager/cuda_graphs=False", precision)]
        assert row["prompt_decoder_60"]["median_ms"] > 0 and row["accuracy"]["mean_mask_iou"] > 0.9
    assert "TensorRT needs a CUDA device" in rows[("tensorrt/engine_route=onnx", "fp16")]["skipped"]
    assert rows[("onnxruntime", "fp32")]["accuracy"]["mean_mask_iou"] > 0.99  # onnxruntime CPU against eager
    assert result["node_core"]["frames"] == 2 and result["node_core"]["p99_ms"] > 0
    assert "Node core" in table.read_text() and "| eager/cuda_graphs=False | fp32 |" in table.read_text()
