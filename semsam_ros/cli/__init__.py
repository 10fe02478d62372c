"""The ``semsam`` command line (``semsam = semsam_ros.cli:main``): thin front ends over the libraries."""
from semsam_ros.cli.main import main

__all__ = ["main"]
