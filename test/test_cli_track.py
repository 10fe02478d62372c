"""`semsam track` end to end on the tiny random checkpoint: files written, ids stable on a static scene, animated
images, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semsam_ros.cli import main
from semsam_ros.cli.track import frame_sources, read_frame
from semsam_ros.inference.postprocess import rle_to_mask
from tracking_scenes import texture

H, W, FRAMES = 96, 128, 12
POINTS = ("20,20", "64,48", "100,70", "40,80")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    image = texture(H, W, seed=5)
    for i in range(FRAMES):
        Image.fromarray(image).save(root / f"{i:04d}.png")
    (root / "notes.txt").write_text("not a frame")
    return root


def track(capsys: pytest.CaptureFixture[str], ckpt: Path, *argv: object) -> tuple[int, str, str]:
    status = main(["track", *(str(a) for a in argv), "--checkpoint", str(ckpt), "--device", "cpu",
                   "--input-size", "96", "-q"])
    out, err = capsys.readouterr()
    return status, out, err


def test_track_folder_writes_overlays_and_keeps_ids_on_a_static_scene(
        folder: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [folder, "--out", out] + [a for p in POINTS for a in ("--point", p)] + ["--box", "60,10,120,40"]
    status, stdout, err = track(capsys, tiny_checkpoint, *argv)
    assert status == 0, err
    assert f"{FRAMES} frame(s), 5 track(s)" in stdout
    lines = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(FRAMES))
    assert [r["name"] for r in lines] == [f"{i:04d}.png" for i in range(FRAMES)]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [f"{i:06d}.png" for i in range(FRAMES)]
    assert Image.open(out / "overlays" / "000000.png").size == (W, H)
    found = [{t["id"] for t in r["tracks"] if t["found"]} for r in lines]
    assert found[5], "the tiny model gave no mask at all"
    assert all(f == found[5] for f in found[5:])  # settled after a few frames, then the same ids on every frame
    assert {t["id"] for r in lines for t in r["tracks"]} <= set(range(5))
    record = next(t for t in lines[-1]["tracks"] if t["found"])
    assert record["state"] == "tracking" and set(record) >= {"id", "prompt_id", "level", "score", "bbox", "mask"}
    mask = rle_to_mask(record["mask"])
    assert mask.shape == (H, W) and int(mask.sum()) == record["area"]
    ys, xs = np.nonzero(mask)
    assert record["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_track_animated_gif_and_prompt_file(tiny_checkpoint: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    image = Image.fromarray(texture(H, W, seed=2))
    gif = tmp_path / "clip.gif"
    image.save(gif, save_all=True, append_images=[image.rotate(1), image.rotate(2)], duration=100)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("- {id: 7, points: [[30, 30], [90, 60]], levels: [1, 3]}\n")
    status, stdout, err = track(capsys, tiny_checkpoint, gif, "--prompts", prompts, "--out", tmp_path / "o",
                                "--no-overlay")
    assert status == 0, err
    assert "3 frame(s), 2 track(s)" in stdout and not (tmp_path / "o" / "overlays").exists()
    lines = [json.loads(line) for line in (tmp_path / "o" / "tracks.jsonl").read_text().splitlines()]
    assert [r["name"] for r in lines] == ["clip_000000", "clip_000001", "clip_000002"]
    assert {t["prompt_id"] for t in lines[0]["tracks"]} == {7}
    assert all(t["level"] in (1, 3) for r in lines for t in r["tracks"] if t["found"])


@pytest.mark.parametrize("case, message", [
    ("empty", "no image files in"),
    ("missing", "not found:"),
    ("video", "video files are not supported"),
    ("noprompt", "nothing to track"),
    ("outside", "is outside the 128x96 first frame"),
    ("sizes", "all frames must have one size"),
    ("text", "text alone cannot"),
])
def test_track_errors_are_one_line(case: str, message: str, folder: Path, tiny_checkpoint: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    source, extra = folder, ["--point", "5,5"]
    if case == "empty":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "missing":
        source = tmp_path / "none"
    elif case == "video":
        source = tmp_path / "clip.mp4"
        source.write_bytes(b"\0" * 64)
    elif case == "noprompt":
        extra = []
    elif case == "outside":
        extra = ["--point", "200,5"]
    elif case == "sizes":
        source = tmp_path / "sizes"
        source.mkdir()
        Image.fromarray(texture(H, W)).save(source / "a.png")
        Image.fromarray(texture(H, W + 8)).save(source / "b.png")
    elif case == "text":
        (tmp_path / "p.yaml").write_text("- {text: mug}\n")
        extra = ["--prompts", tmp_path / "p.yaml"]
    status, _, err = track(capsys, tiny_checkpoint, source, "--out", tmp_path / "out", *extra)
    assert status == 1 and err.count("\n") == 1 and err.startswith("semsam: error: ") and message in err, err


def test_frames_decode_as_every_image_file(tmp_path):
    """A 16-bit grey frame is scaled down by 256 (not clipped to white), a GIF's later frames are read too."""
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "a.png")
    (grey,) = [read_frame(source, 10**6) for source in frame_sources(tmp_path)]
    assert grey.shape == (8, 8, 3) and (grey == 30000 >> 8).all()
    frames = [Image.fromarray(np.full((8, 8, 3), value, np.uint8)) for value in (10, 200)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    sources = frame_sources(tmp_path / "clip.gif")
    assert [int(read_frame(s, 10**6)[0, 0, 0]) for s in sources] == [10, 200]
