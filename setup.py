"""pip install for semsam_ros (colcon builds the ROS package with CMakeLists.txt instead)."""
from glob import glob

from setuptools import find_packages, setup

setup(
    name="semsam_ros",
    version="0.1.0",
    description="Semantic-SAM for ROS 2: segment and recognise anything at any granularity",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["semsam_ros", "semsam_ros.*"]),
    package_data={"semsam_ros": ["py.typed"]},
    data_files=[
        ("share/semsam_ros/msg", sorted(glob("msg/*.msg"))),
        ("share/semsam_ros/srv", sorted(glob("srv/*.srv"))),
        ("share/semsam_ros/config", sorted(glob("config/*"))),
        ("share/semsam_ros/models", sorted(glob("models/*.yaml"))),
    ],
    install_requires=[
        "torch>=2.8",
        "numpy>=1.23",
        "pillow>=9.0",
        "scipy>=1.9",
        "safetensors>=0.4",
        "pyyaml>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "bag": ["rosbags>=0.10"],
        "fleet": ["ray>=2.40", "pyarrow>=14", "rosbags>=0.10"],
        "semantics": ["transformers>=4.40"],
        "onnx": ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"],
        "test": ["pytest>=7", "rosbags>=0.10", "onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"],
    },
    entry_points={"console_scripts": ["semsam = semsam_ros.cli:main"]},
)
