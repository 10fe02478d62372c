"""The input policy: bombs refused from the header, the encoder long side bounded, 16-bit files, NaN checkpoints."""
from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from semsam_ros.io.checkpoint import CheckpointError
from semsam_ros.cli.image import read_image
from semsam_ros.inference.options import ModelOptions, load_predictor
from semsam_ros.inference.predictor import Predictor
from semsam_ros.limits import InputRejected, check_long_side
from semsam_ros.ros.images import image_to_rgb
from semsam_ros.testing import make_tiny_checkpoint, random_model


def encoded(codec: str, size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, format=codec)
    return out.getvalue()


def claim_size(data: bytes, codec: str, width: int, height: int) -> bytes:
    """``data`` with its header claiming ``width`` x ``height`` (a decompression bomb of a few hundred bytes)."""
    if codec == "PNG":  # IHDR right after the signature: length, type, width, height..., CRC
        ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
        return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]
    sof = data.index(b"\xff\xc0")  # baseline JPEG frame header: marker, length, precision, height, width
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("codec", ["JPEG", "PNG"])
def test_a_compression_bomb_is_refused_from_its_header(codec):
    bomb = claim_size(encoded(codec), codec, 12000, 9000)
    assert len(bomb) < 2000
    msg = SimpleNamespace(format=codec.lower(), data=bomb)
    start = time.perf_counter()
    with pytest.raises(InputRejected, match="of 12000x9000 = .*parameter max_image_pixels") as err:
        image_to_rgb(msg)
    assert err.value.cause == "too_large" and time.perf_counter() - start < 0.5
    small = claim_size(encoded(codec), codec, 8, 6)  # the patched header itself is valid
    assert image_to_rgb(SimpleNamespace(format=codec.lower(), data=small)).shape == (6, 8, 3)


def test_a_raw_image_over_the_cap_is_refused_before_its_data():
    msg = SimpleNamespace(height=9000, width=12000, encoding="rgb8", is_bigendian=0, step=36000, data=b"")
    with pytest.raises(InputRejected, match="max_image_pixels") as err:
        image_to_rgb(msg)
    assert err.value.cause == "too_large"
    ok = SimpleNamespace(height=2, width=3, encoding="mono8", is_bigendian=0, step=3, data=bytes(range(6)))
    assert image_to_rgb(ok, max_pixels=6).shape == (2, 3, 3)
    with pytest.raises(InputRejected):
        image_to_rgb(ok, max_pixels=5)


def test_16bit_grey_png_is_scaled_in_the_cli_as_in_the_node(tmp_path: Path):
    grey = np.array([[0, 256, 32768], [65535, 512, 1000]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    rgb = read_image(str(path))
    np.testing.assert_array_equal(rgb[..., 0], grey >> 8)
    png = SimpleNamespace(format="png", data=path.read_bytes())
    np.testing.assert_array_equal(image_to_rgb(png), rgb)


def test_the_encoder_long_side_is_bounded():
    with pytest.raises(InputRejected, match=r"2000x2 image \(aspect ratio 1000.00\).*max_long_side") as err:
        check_long_side(2, 2000, 640)
    assert err.value.cause == "too_long"
    check_long_side(720, 1280, 640)  # 1137 px: a 16:9 camera fits
    predictor = Predictor(random_model(), short_side=96, max_long_side=192)
    with pytest.raises(InputRejected, match="max_long_side"):
        predictor.set_image(np.zeros((10, 30, 3), np.uint8))  # 96 x 288
    predictor.set_image(np.zeros((10, 20, 3), np.uint8))  # 96 x 192


def test_an_input_size_over_the_long_side_is_refused_before_the_model_loads(tmp_path: Path):
    with pytest.raises(InputRejected, match="max_long_side"):
        load_predictor(ModelOptions(tmp_path / "never_read.pth", device="cpu", short_side=100000))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(tmp_path: Path, value: float):
    path = make_tiny_checkpoint(tmp_path / "tiny.pth")
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and "backbone" in k)
    state["model"][name].view(-1)[0] = value
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="broken: 1 weight tensor"):
        load_predictor(ModelOptions(path, device="cpu", short_side=96))
    predictor, _ = load_predictor(ModelOptions(make_tiny_checkpoint(tmp_path / "ok.pth"), device="cpu",
                                               short_side=96))
    assert predictor.max_long_side == 2048
