"""``plan_bag``: everything ``process_bag`` checks that needs no model, done before the model is loaded.

The options, the paths, the bag (opened, so a corrupt one is refused), the topics and the output topic names are
checked here; with ``device`` the node's post-processing (and with ``semantics`` its CLIP model) is loaded too.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semsam_ros.bag.options import BagOptions
from semsam_ros.bag.prompts import default_camera_info_topic, output_topics
from semsam_ros.bag.reader import CAMERA_INFO, IMAGE_TYPES, PROMPT, STORAGES, BagError, open_bag, storage_of
from semsam_ros.ros.convert import PromptRequest
from semsam_ros.ros.outputs import NEEDS_3D, OUTPUT_TYPES
from semsam_ros.text import one_line


@dataclass
class CameraPlan:
    """One image topic: its output topics and what each of its frames is segmented with."""

    topic: str
    names: dict[str, tuple[str, str]]  # output kind -> (topic, message type)
    prompts: list[PromptRequest]  # on every processed frame
    prompt_topic: str | None
    depth_topic: str | None
    info_topic: str | None


@dataclass
class BagPlan:
    """What ``process_bag`` will do, checked against the bag without the model (from :func:`plan_bag`)."""

    src: Path
    dst: Path
    options: BagOptions
    storage: str  # of the output
    distro: str  # typestore
    cameras: dict[str, CameraPlan]
    companions: dict[str, str] = field(default_factory=dict)  # depth or camera_info topic -> message type
    pipeline: Any = None  # a ros.pipeline.ModelPipeline when planned with a device


def check_paths(src: Path, dst: Path) -> None:
    """BagError unless the input exists and the output does not and can be created (missing folders above it are
    created when it is written)."""
    if not src.exists():
        raise BagError(f"bag not found: {src}")
    if dst.exists() or dst.is_symlink():
        raise BagError(f"output {dst} exists already; choose another --out or delete it")
    parent = dst.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise BagError(f"cannot create output {dst}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BagError(f"cannot create output {dst}: no permission to write in {parent}")


def check_options(options: BagOptions) -> None:
    """BagError for options that are wrong whatever the bag."""
    from semsam_ros.ros.typestore import STORES

    if options.every < 1:
        raise BagError(f"every must be >= 1, got {options.every}")
    if not options.image_topics:
        raise BagError("no image topic given")
    if options.storage not in (None, *STORAGES):
        raise BagError(f"storage must be one of {', '.join(STORAGES)}, got {options.storage!r}")
    if options.distro not in (None, *STORES):
        raise BagError(f"distro must be one of {', '.join(STORES)}, got {options.distro!r}")
    if options.track and len(options.image_topics) != 1:
        raise BagError("--track follows the prompts of one image topic: give a single --image-topic")
    if len(options.image_topics) > 1 and (options.segments_topic or options.overlay_topic):
        raise BagError("--segments-topic and --overlay-topic need a single --image-topic")
    reasons = options.params.validate()
    if reasons:
        raise BagError("; ".join(reasons))


def plan_bag(src: str | Path, dst: str | Path, options: BagOptions, *, device: str | None = None) -> BagPlan:
    """Check everything about processing ``src`` into ``dst`` that needs no model; BagError (one line) otherwise.

    With ``device`` the node's post-processing is built on it as well, which loads the CLIP model when
    ``options.params.semantics``: a missing CLIP model is then reported here too. Give the plan to ``process_bag``.
    """
    from semsam_ros.ros.typestore import STORES, make_typestore

    src, dst = Path(src), Path(dst)
    check_options(options)
    check_paths(src, dst)
    with open_bag(src) as reader:
        storage = options.storage or storage_of(src)
        distro = options.distro or (reader.ros_distro if reader.ros_distro in STORES else "humble")
        cameras, companions = plan_cameras(reader.topics, options, make_typestore(distro))
    plan = BagPlan(src, dst, options, storage, distro, cameras, companions)
    if device is not None:
        plan.pipeline = make_pipeline(options, device)
    return plan


def make_pipeline(options: BagOptions, device: str) -> Any:
    """The node's ModelPipeline on ``device``; BagError when its CLIP model (``semantics``) cannot be loaded."""
    from semsam_ros.ros.pipeline import ModelPipeline
    from semsam_ros.types import DEFAULT_CLIP_MODEL

    try:
        return ModelPipeline(options.params, device, want_points=lambda: True)
    except (OSError, ImportError, ValueError) as exc:
        if not options.params.semantics:
            raise
        source = options.params.clip_model or DEFAULT_CLIP_MODEL
        if isinstance(exc, ImportError) or Path(source).is_dir():
            raise BagError(f"semantics=true: cannot load the CLIP model {source!r}: "
                           f"{one_line(str(exc), 200) or type(exc).__name__}") from None
        raise BagError(f"semantics=true: the CLIP model {source!r} is not on this machine: download it once with "
                       f"`hf download {source}`, or set clip_model to a folder saved with save_pretrained") from None


def plan_cameras(topics: dict[str, Any], options: BagOptions, typestore: Any
                 ) -> tuple[dict[str, CameraPlan], dict[str, str]]:
    """Check the topics of ``options`` against the bag's ``topics`` and name the outputs of each image topic."""
    for topic in options.image_topics:
        require_topic(topics, topic, IMAGE_TYPES, "image")
    for what, mapping in (("prompts", options.prompts), ("prompt_topics", options.prompt_topics),
                          ("depth_topics", options.depth_topics),
                          ("camera_info_topics", options.camera_info_topics)):
        unknown = sorted(set(mapping) - set(options.image_topics))
        if unknown:
            raise BagError(f"{what} names {unknown[0]}, which is not one of the image topics")
    taken: set[str] = set()
    cameras: dict[str, CameraPlan] = {}
    companions: dict[str, str] = {}
    for topic in options.image_topics:
        names = output_topics(topic, options.image_topics)
        names["segments"] = options.segments_topic or names["segments"]
        names["overlay"] = options.overlay_topic or names["overlay"]
        kinds = ["segments", "label_image"] + (["overlay"] if options.overlay else [])
        if OUTPUT_TYPES["detections"] in typestore.fielddefs:  # vision_msgs: as the node, when known
            kinds.append("detections")
        depth_topic = options.depth_topics.get(topic)
        info_topic = None
        if depth_topic is not None:
            require_topic(topics, depth_topic, IMAGE_TYPES, "depth")
            info_topic = options.camera_info_topics.get(topic, default_camera_info_topic(topic))
            require_topic(topics, info_topic, (CAMERA_INFO,), "camera_info")
            kinds += NEEDS_3D
            companions.setdefault(depth_topic, topics[depth_topic].msgtype)
            companions.setdefault(info_topic, CAMERA_INFO)
        prompt_topic = options.prompt_topics.get(topic)
        if prompt_topic is not None:
            require_topic(topics, prompt_topic, (PROMPT,), "prompt")
        for kind in kinds:
            if names[kind] in topics or names[kind] in taken:
                raise _clash(names[kind], kind, topic, names[kind] in topics, options)
            taken.add(names[kind])
        cameras[topic] = CameraPlan(topic, {kind: (names[kind], OUTPUT_TYPES[kind]) for kind in kinds},
                                    options.prompts.get(topic, []), prompt_topic, depth_topic, info_topic)
    return cameras, companions


def _clash(name: str, kind: str, image_topic: str, in_input: bool, options: BagOptions) -> BagError:
    """The error for an output topic that is taken, suggesting only what can free it."""
    option = f"--{kind}-topic" + (" (or --no-overlay)" if kind == "overlay" else "")
    if kind in ("segments", "overlay") and len(options.image_topics) == 1:
        advice = f"choose another with {option}"
    elif kind in ("segments", "overlay"):
        advice = f"process {image_topic} in a run of its own with {option}"
    elif in_input:
        advice = "process a bag without it (written by an earlier run or the node?)"
    else:
        advice = "process these image topics in separate runs"
    where = "in the input bag" if in_input else "as an output of another image topic"
    return BagError(f"{kind} output topic {name} of image topic {image_topic} exists already {where}; {advice}")


def require_topic(topics: dict[str, Any], topic: str, msgtypes: Sequence[str], what: str) -> None:
    if topic not in topics:
        candidates = sorted(t for t, info in topics.items() if info.msgtype in msgtypes)
        raise BagError(f"{what} topic {topic} is not in the bag (topics of type {' or '.join(msgtypes)}: "
                       f"{', '.join(candidates) or 'none'})")
    if topics[topic].msgtype not in msgtypes:
        raise BagError(f"{what} topic {topic} has type {topics[topic].msgtype}, expected {' or '.join(msgtypes)}")
