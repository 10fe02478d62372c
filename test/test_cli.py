"""`semsam` end to end on a tiny random checkpoint: files written, JSON schema, one-line errors and exit codes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import semsam_ros
from semsam_ros.io.checkpoint import count_parameters
from semsam_ros.cli import main
from semsam_ros.inference.options import resolve_device
from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt, rle_to_mask
from semsam_ros.testing import make_tiny_checkpoint
from semsam_ros.text import one_line

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    image = (rng.random((72, 96, 3)) * 255).astype(np.uint8)
    image[10:50, 20:70] = (200, 40, 40)
    Image.fromarray(image).save(root / "image.png")
    (root / "broken.png").write_bytes(b"not an image")
    (root / "junk.pth").write_bytes(b"not a checkpoint")
    torch.save({"conv.weight": torch.zeros(3)}, root / "foreign.pth")
    save_file({"conv.weight": torch.zeros(3)}, str(root / "foreign.safetensors"))
    return {
        "root": root,
        "image": root / "image.png",
        "broken": root / "broken.png",
        "junk": root / "junk.pth",
        "ckpt": make_tiny_checkpoint(root / "tiny.pth"),
        "foreign_pth": root / "foreign.pth",
        "foreign_st": root / "foreign.safetensors",
    }


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_segment_writes_overlays_masks_and_summary(files: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "seg"
    status, stdout, err = run(capsys, "segment", files["image"], "--point", "30,20", "--point", "80.5,60",
                              "--box", "5,5,60,40", "--levels", "1,3,6", "--checkpoint", files["ckpt"],
                              "--input-size", "96", "--iou-threshold", "-1", "--out", out, "-q")
    assert status == 0 and "3 prompt(s)" in stdout and err == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["image_size"] == [72, 96] and summary["levels"] == [1, 3, 6]
    assert summary["postprocess"] == {"iou_threshold": -1.0, "dedupe_iou": 0.95, "hole_area": 100,
                                      "island_area": 100, "sort": "score", "keep_best_when_none": True}
    assert summary["model_id"] == semsam_ros.load_model(files["ckpt"]).model_id
    assert [p.get("point") for p in summary["prompts"]] == [[30.0, 20.0], [80.5, 60.0], None]
    assert summary["prompts"][2]["box"] == [5.0, 5.0, 60.0, 40.0]
    # the same prompts through the Python API
    predictor = semsam_ros.Predictor(semsam_ros.load_model(files["ckpt"]), short_side=96)
    predictor.set_image(np.asarray(Image.open(files["image"]).convert("RGB")))
    pred = predictor.predict(points=[[30, 20], [80.5, 60]], boxes=[[5, 5, 60, 40]])
    for i, prompt in enumerate(summary["prompts"]):
        assert prompt["id"] == i
        assert Image.open(out / prompt["overlay"]).size == (96, 72)
        assert Image.open(out / prompt["level_grid"]).size == (3 * 96, 72)
        expected = postprocess_prompt(pred.mask_logits[i, [0, 2, 5]], pred.iou_scores[i, [0, 2, 5]],
                                      PostprocessParams(iou_threshold=-1), levels=(1, 3, 6))
        assert len(prompt["segments"]) == len(expected) >= 1
        for seg, exp in zip(prompt["segments"], expected):
            assert set(seg) == {"level", "iou_score", "area", "raw_area", "bbox", "centroid", "mask"}
            mask = np.asarray(Image.open(out / seg["mask"])) > 0
            np.testing.assert_array_equal(mask, exp.mask)
            assert seg["level"] == exp.level and seg["area"] == int(mask.sum()) and seg["bbox"] == list(exp.bbox)
            assert seg["iou_score"] == pytest.approx(exp.iou_score) and seg["raw_area"] == exp.raw_area


def test_auto_writes_coco_json_and_overlay(files: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "auto"
    status, stdout, _ = run(capsys, "auto", files["image"], "--checkpoint", files["ckpt"], "--out", out,
                            "--input-size", "96", "--points-per-side", "4", "--levels", "2,5",
                            "--pred-iou-thresh", "-1", "--stability-score-thresh", "0", "-q")
    assert status == 0
    coco = json.loads((out / "masks.json").read_text())
    assert coco["image"] == {"file_name": str(files["image"]), "height": 72, "width": 96}
    assert coco["levels"] == [2, 5] and f"{len(coco['annotations'])} mask(s)" in stdout
    assert coco["annotations"]
    for i, ann in enumerate(coco["annotations"]):
        assert set(ann) == {"id", "segmentation", "area", "bbox", "predicted_iou", "stability_score", "level",
                            "point_coords", "crop_box"}
        assert ann["id"] == i and ann["level"] in (2, 5) and ann["crop_box"] == [0, 0, 96, 72]
        assert ann["area"] == int(rle_to_mask(ann["segmentation"]).sum())
    assert Image.open(out / "overlay.png").size == (96, 72)


def test_info_and_convert(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, stdout, _ = run(capsys, "info", files["ckpt"])
    params = count_parameters(semsam_ros.load_model(files["ckpt"]))
    sha = hashlib.sha256(files["ckpt"].read_bytes()).hexdigest()
    assert status == 0 and f"parameters {params:,}" in stdout and f"sha256     {sha}" in stdout
    assert "format     official-pth" in stdout and "preset     custom" in stdout
    dst = tmp_path / "tiny.safetensors"
    status, stdout, _ = run(capsys, "convert", files["ckpt"], dst)
    assert status == 0 and dst.is_file() and hashlib.sha256(dst.read_bytes()).hexdigest() in stdout
    status, stdout, _ = run(capsys, "info", dst, "--json")
    info = json.loads(stdout)
    assert status == 0 and info["format"] == "safetensors" and info["parameters"] == params


@pytest.mark.parametrize("argv, status, message", [
    (["segment", "{missing}", "--point", "1,1"], 1, "image not found"),
    (["segment", "{broken}", "--point", "1,1"], 1, "cannot read image"),
    (["segment", "{image}", "--point", "97,10"], 1, "point (97, 10) is outside the 96x72 image"),
    (["segment", "{image}", "--box", "10,10,5,30"], 1, "X1 > X0"),
    (["segment", "{image}", "--box", "0,0,100,30"], 1, "outside the 96x72 image"),
    (["segment", "{image}"], 1, "give at least one prompt"),
    (["segment", "{image}", "--point", "1"], 2, "a point (X,Y) must be 2 comma-separated numbers"),
    (["segment", "{image}", "--point", "1,1", "--levels", "3,3"], 2, "levels must be distinct"),
    (["segment", "{image}", "--point", "1,1", "--checkpoint", "{junk}"], 1, "not a readable PyTorch checkpoint"),
    (["segment", "{image}", "--point", "1,1", "--checkpoint", "{root}/none.pth"], 1, "checkpoint file not found"),
    (["segment", "{image}", "--point", "1,1", "--checkpoint", "{ckpt}", "--config", "swint"], 1,
     "checkpoint does not match the model"),
    (["segment", "{image}", "--point", "1,1", "--checkpoint", "{foreign_pth}"], 1, "cannot infer the model config"),
    (["auto", "{image}", "--checkpoint", "{foreign_st}"], 1, "not a semsam_ros safetensors file"),
    pytest.param(["segment", "{image}", "--point", "1,1", "--device", "cuda:0"], 1, "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    (["segment", "{image}", "--point", "1,1", "--device", "tpu9"], 1, "bad device 'tpu9'"),
    (["segment", "{image}", "--point", "1,1", "--checkpoint", "{ckpt}", "--backend", "tensorrt"], 1,
     "backend 'tensorrt' (fp32) cannot run on cpu"),
    (["segment", "{image}", "--point", "1,1", "--input-size", "8"], 1, "input size (short side) must be at least 32"),
    (["auto", "{image}", "--points-per-side", "0"], 1, "points_per_side"),
    (["segment", "{image}", "--point", "1,1", "--out", "{image}"], 1, "cannot create the output folder"),
    (["info", "{junk}"], 1, "not a readable PyTorch checkpoint"),
    (["convert", "{ckpt}", "{root}/out.pth"], 1, "must be a .safetensors file"),
    (["convert", "{junk}", "{root}/out.safetensors"], 1, "not a readable PyTorch checkpoint"),
    (["convert", "{ckpt}", "{root}/missing/out.safetensors"], 1, "the folder"),
    (["segment", "{image}", "--point", "1,1", "--input-size", "100000"], 1, "parameter max_long_side"),
    (["segment", "{image}", "--point", "1,1", "--max-image-pixels", "100"], 1, "parameter max_image_pixels"),
    (["segment", "{image}", "--point", "1,1", "--out", "{image}/sub", "--checkpoint", "{junk}"], 1,
     "is not a writable folder"),
    (["download", "swinx"], 2, "invalid choice: 'swinx'"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
])
def test_user_mistakes_are_one_line_errors(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           argv: list[str], status: int, message: str) -> None:
    names = {k: str(v) for k, v in files.items()} | {"missing": str(tmp_path / "missing.png")}
    argv = [a.format(**names) for a in argv]
    if argv[0] in ("segment", "auto") and "--checkpoint" not in argv:
        argv += ["--checkpoint", str(files["ckpt"])]
    if argv[0] in ("segment", "auto"):
        argv += ["-q"] + ([] if "--out" in argv else ["--out", str(tmp_path / "out")])
        argv += [] if "--input-size" in argv else ["--input-size", "96"]
    got, stdout, err = run(capsys, *argv)
    assert got == status and stdout == ""
    assert err.startswith("semsam: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_device_auto_is_cuda_when_available() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_one_line() -> None:
    assert one_line("a\n  b\n\nc") == "a; b; c"
    assert one_line("x" * 400, limit=20) == "x" * 16 + " ..."


def test_console_entry_point(files: dict[str, Path], tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ok = subprocess.run([sys.executable, "-m", "semsam_ros.cli", "--help"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "segment" in ok.stdout and "download" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "semsam_ros.cli", "segment", str(tmp_path / "none.png"),
                          "--point", "1,1", "--checkpoint", str(files["ckpt"]), "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr == f"semsam: error: image not found: {tmp_path / 'none.png'}\n"


# --- semantics: --labels and --text with a tiny random CLIP ------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from semsam_ros.semantics.testing import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


SEMANTIC_KEYS = {"id", "parent_id", "child_ids", "kind", "label", "label_score", "top_labels"}


def check_labels(records: list[dict]) -> None:
    """Label fields of --labels, and part-of links that point at records of the same file."""
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == len(records)
    for r in records:
        assert r["kind"] == ("object" if r["level"] <= 3 else "part")
        names = [name for name, _ in r["top_labels"]]
        assert r["label"] in names + ["unknown"] and 0.0 <= r["label_score"] <= 1.0
        if r["parent_id"] >= 0:
            assert r["id"] in by_id[r["parent_id"]]["child_ids"]
        assert all(by_id[c]["parent_id"] == r["id"] for c in r["child_ids"])


def test_segment_with_labels_and_text(files: dict[str, Path], clip: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "text"
    status, stdout, err = run(capsys, "segment", files["image"], "--point", "55,45", "--box", "5,5,60,40",
                              "--text", "mug handle", "--text-top-k", "2", "--parts", "handle,lid",
                              "--clip-model", clip, "--checkpoint", files["ckpt"], "--input-size", "128",
                              "--iou-threshold", "-1", "--out", out, "-q")
    assert status == 0 and err == "", err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["text"] == {"query": "mug handle", "top_k": 2, "overlay": "text_overlay.png"}
    assert summary["clip_model"] == str(clip.resolve())
    assert Image.open(out / "text_overlay.png").size == (96, 72)
    records = [s for p in summary["prompts"] for s in p["segments"]]
    assert all(set(r) >= SEMANTIC_KEYS for r in records)
    assert sorted(r["id"] for r in records) == list(range(len(records)))  # one id space over all prompts
    check_labels(records)
    assert {n for r in records if r["kind"] == "part" for n, _ in r["top_labels"]} <= {"handle", "lid"}
    click, box = summary["prompts"]
    # a click's masks compete only when they hold the click (random weights: maybe none does)
    holding = [r for r in click["segments"] if np.asarray(Image.open(out / r["mask"]))[45, 55] > 0]
    assert len(click["segments"]) > len(holding) and len(click["text_matches"]) == min(2, len(holding))
    assert {m["id"] for m in click["text_matches"]} <= {r["id"] for r in holding}
    assert len(box["text_matches"]) == min(2, len(box["segments"])) >= 1
    for prompt in (click, box):
        matches = prompt["text_matches"]
        assert matches == sorted(matches, key=lambda m: -m["score"])
        ids = {r["id"]: r for r in prompt["segments"]}
        for m in matches:
            assert m["id"] in ids and m["mask"] == ids[m["id"]]["mask"] and m["level"] == ids[m["id"]]["level"]
            assert m["score"] == pytest.approx(m["similarity"] + 0.1 * m["match"])
    assert ("prompt 0: 'mug handle' -> " + ("level" if holding else "no mask holds the point")) in stdout
    assert "prompt 1: 'mug handle' -> level" in stdout


def test_segment_with_labels_only(files: dict[str, Path], clip: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels"
    status, _, err = run(capsys, "segment", files["image"], "--point", "30,20", "--labels", "--clip-model", clip,
                         "--levels", "2,5", "--checkpoint", files["ckpt"], "--input-size", "96",
                         "--iou-threshold", "-1", "--out", out, "-q")
    assert status == 0 and err == "", err
    summary = json.loads((out / "summary.json").read_text())
    assert "text" not in summary and "text_matches" not in summary["prompts"][0]
    check_labels(summary["prompts"][0]["segments"])
    assert not (out / "text_overlay.png").exists()


def test_auto_with_labels_and_text(files: dict[str, Path], clip: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "auto_text"
    status, stdout, err = run(capsys, "auto", files["image"], "--labels", "--text", "lid", "--clip-model", clip,
                              "--checkpoint", files["ckpt"], "--out", out, "--input-size", "96",
                              "--points-per-side", "3", "--levels", "2,5", "--pred-iou-thresh", "-1",
                              "--stability-score-thresh", "0", "-q")
    assert status == 0 and err == "", err
    coco = json.loads((out / "masks.json").read_text())
    annotations = coco["annotations"]
    assert annotations and all(set(a) >= SEMANTIC_KEYS for a in annotations)
    assert [a["id"] for a in annotations] == list(range(len(annotations)))
    check_labels(annotations)
    matches = coco["text"]["matches"]
    assert coco["text"]["query"] == "lid" and 1 <= len(matches) <= min(3, len(annotations))
    assert all(m["level"] == annotations[m["id"]]["level"] for m in matches)
    assert Image.open(out / "text_overlay.png").size == (96, 72)
    assert f"'lid' -> mask {matches[0]['id']}" in stdout


def test_semantics_mistakes_are_one_line_errors(files: dict[str, Path], clip: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--checkpoint", files["ckpt"], "--input-size", "96", "--out", tmp_path / "out", "-q"]
    cases = [
        (["segment", files["image"], "--point", "1,1", "--text", "the", "--clip-model", clip], 1,
         "--text 'the' names nothing to select"),
        (["segment", files["image"], "--point", "1,1", "--labels", "--clip-model", "nobody/no-such-clip"], 1,
         "the CLIP model 'nobody/no-such-clip' is not on this machine: download it once with "
         "`hf download nobody/no-such-clip`"),
        (["auto", files["image"], "--labels", "--clip-model", files["root"]], 1,
         f"cannot load a CLIP model from the folder {files['root']}"),
        (["segment", files["image"], "--point", "1,1", "--labels", "--vocabulary", tmp_path / "none.yaml"], 1,
         "vocabulary not found"),
        (["segment", files["image"], "--point", "1,1", "--text", "lid", "--text-top-k", "0"], 1,
         "--text-top-k must be at least 1"),
        (["segment", files["image"], "--point", "1,1", "--labels", "--parts", "handle,,lid"], 2,
         "names must be comma-separated and non-empty"),
    ]
    for argv, status, message in cases:
        got, stdout, err = run(capsys, *argv, *base)
        assert got == status and stdout == "", (argv, err)
        assert err.startswith("semsam: error: ") and err.count("\n") == 1 and message in err, err
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    got, _, err = run(capsys, "auto", files["image"], "--text", "lid", "--clip-model", clip, *base)
    assert got == 1 and "need Hugging Face transformers: pip install 'transformers>=4.40'" in err
    assert not (tmp_path / "out").exists()
