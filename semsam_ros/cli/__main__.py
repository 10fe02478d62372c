"""``python3 -m semsam_ros.cli``."""
import sys

from semsam_ros.cli import main

sys.exit(main())
