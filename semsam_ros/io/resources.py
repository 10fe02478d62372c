"""Where the package's data files (msg/, srv/, config/, models/) are found, however it was installed."""
from __future__ import annotations

import os
import site
import sys
from pathlib import Path

PACKAGE = "semsam_ros"


def share_dirs() -> list[Path]:
    """Folders that may hold our data files, in the order they are tried.

    The source checkout (editable installs, tests), then ``share/semsam_ros`` of the colcon install (found
    through the ament index), of the Python prefix and of the user base (``pip install``).
    """
    dirs = [Path(__file__).resolve().parents[2]]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and (Path(prefix) / "share/ament_index/resource_index/packages" / PACKAGE).is_file():
            dirs.append(Path(prefix) / "share" / PACKAGE)
    dirs += [Path(sys.prefix) / "share" / PACKAGE, Path(site.getuserbase()) / "share" / PACKAGE]
    return dirs


def find_data_file(relative: str | Path) -> Path:
    """The first ``<share dir>/<relative>`` that exists; FileNotFoundError naming every place tried."""
    candidates = [d / relative for d in share_dirs()]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{relative} not found; looked in " + ", ".join(str(p) for p in candidates))
