"""Shared fixtures: tiny random checkpoints (made here, never downloaded) and the shared reference data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semsam_ros.io.checkpoint import load_model
from semsam_ros.inference.predictor import Predictor
from semsam_ros.testing import make_tiny_checkpoint

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"shared reference data not found at {REFERENCE_DIR} (CI provides ../shared)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    return load_model(tiny_checkpoint)


@pytest.fixture()
def tiny_predictor(tiny_model) -> Predictor:
    return Predictor(tiny_model, short_side=96)


@pytest.fixture(scope="session")
def test_image() -> np.ndarray:
    """A 48x80 RGB image with structure (gradients and a bright disc)."""
    yy, xx = np.mgrid[0:48, 0:80]
    img = np.stack([xx * 3, yy * 5, 255 - xx * 2], axis=-1).astype(np.float64)
    img[(yy - 24) ** 2 + (xx - 50) ** 2 < 100] = (250, 240, 30)
    return img.clip(0, 255).astype(np.uint8)
