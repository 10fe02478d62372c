"""`semsam build-engine`: argument parsing, a clear failure without Torch-TensorRT, and a build then a cached run
(through the stand-in for torch_tensorrt)."""
from __future__ import annotations

import argparse
import json
import sys

import pytest

from semsam_ros.cli import engine, main
from semsam_ros.inference import backends
from semsam_ros.inference.backends import TensorRTBackend
from trt_fakes import FakeCompiler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semsam build-engine")
    engine.add_arguments(parser)
    return parser


def test_arguments():
    args = _parser().parse_args(["--checkpoint", "m.pth", "--input-size", "640x853", "--buckets", "8,1,64,8"])
    assert args.input_size == (640, 853) and args.buckets == (1, 8, 64)
    assert (args.precision, args.device, args.accuracy, args.min_iou, args.cache_dir) == (
        "fp16",
        "cuda",
        "refuse",
        0.98,
        None,
    )
    for bad in (["--input-size", "640"], ["--input-size", "0x960"], ["--buckets", "0,8"], ["--buckets", "a"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(["--checkpoint", "m.pth", "--input-size", "640x960", *bad])


def test_without_tensorrt_it_fails_clearly(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    argv = ["build-engine", "--input-size", "64x96", "--device", "cpu", "--checkpoint"]
    assert main([*argv, str(tiny_checkpoint)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("semsam: error: backend 'tensorrt' (fp16) cannot run on cpu") and err.count("\n") == 1
    assert "torch_tensorrt cannot be imported" in err
    assert main([*argv, str(tiny_checkpoint.parent / "missing.pth")]) == 1
    assert "checkpoint file not found" in capsys.readouterr().err


def test_build_then_everything_from_the_cache(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def fake_backend(name, model, device, precision, **options):
        return TensorRTBackend(model, device, precision, compiler=FakeCompiler(), **options)

    monkeypatch.setattr(backends, "create_backend", fake_backend)
    argv = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--input-size",
        "64x90",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--buckets",
        "1,4",
        "--cache-dir",
        str(tmp_path),
    ]
    assert main(["build-engine", *argv]) == 0
    out = capsys.readouterr().out
    assert "64x90 (padded 64x96), fp32: 3 engines built, 0 from the cache" in out
    assert "image encoder" in out and "decoder x4 prompts" in out and "mean mask IoU 1.0000" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert [e["source"] for e in summary["engines"]] == ["built"] * 3 and all(
        e["size_bytes"] for e in summary["engines"]
    )

    assert main(["build-engine", *argv]) == 0
    out = capsys.readouterr().out
    assert "3 from the cache" in out and "0 engines built" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["accuracy"]["mean_mask_iou"] == 1.0  # the figures recorded at build time


def test_refused_engines_exit_3(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def fake_backend(name, model, device, precision, **options):
        return TensorRTBackend(model, device, precision, compiler=FakeCompiler(negate=True), **options)

    monkeypatch.setattr(backends, "create_backend", fake_backend)
    argv = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--input-size",
        "64x96",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--buckets",
        "4",
        "--cache-dir",
        str(tmp_path),
    ]
    assert main(["build-engine", *argv]) == 3
    assert "mean mask IoU" in capsys.readouterr().err and not list(tmp_path.rglob("*.pt2"))
