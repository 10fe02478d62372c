"""The model side of the node, without ROS: load and warm up the predictor, and the ``Hooks`` NodeCore runs.

Everything heavy (torch, the model, the automatic generator, semantics, geometry) is imported here, lazily, so
``semsam_ros.ros.core`` stays testable with fakes and the bag tools can build the same pipeline as the node.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from semsam_ros.ros.core import Hooks, NodeParams

WARMUP_SHAPE = (480, 640, 3)


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; other names unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_predictor(params: NodeParams) -> tuple[Any, str]:
    """(Predictor, model_id) for ``params``. Raises with the reason on failure.

    The eager backend is warmed up on one blank frame. Compiled backends (compile, tensorrt) are built for the
    camera's own size on its first frame, or loaded from the engine cache when ``semsam build-engine`` prebuilt
    them, so a robot never compiles at launch.
    """
    import semsam_ros

    if not params.checkpoint:
        raise ValueError("no checkpoint given (parameter 'checkpoint')")
    model = semsam_ros.load_model(params.checkpoint, config=params.model_config or None)
    predictor = semsam_ros.Predictor(model, device=resolve_device(params.device), short_side=params.input_size,
                                     backend=params.backend, precision=params.precision)
    if params.backend == "eager":
        blank = np.zeros(WARMUP_SHAPE, dtype=np.uint8)
        predictor.set_embedding(predictor.encode(blank))
        predictor.predict(points=np.array([[WARMUP_SHAPE[1] / 2, WARMUP_SHAPE[0] / 2]]))
    return predictor, model.model_id


def _postprocess(mask_logits: np.ndarray, iou_scores: np.ndarray, levels: tuple[int, ...], prompt_id: int,
                 point: tuple[float, float] | None, params: NodeParams) -> list:
    from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt

    thresholds = PostprocessParams(
        iou_threshold=params.score_threshold, dedupe_iou=params.dedupe_iou, hole_area=params.min_region_area,
        island_area=params.min_region_area,
    )
    return postprocess_prompt(mask_logits, iou_scores, thresholds, prompt_id=prompt_id, point=point, levels=levels)


def _automatic(predictor: Any, rgb: np.ndarray, levels: tuple[int, ...], params: NodeParams) -> list:
    from semsam_ros.inference.amg import AutomaticMaskGenerator

    generator = AutomaticMaskGenerator(
        predictor, points_per_side=params.points_per_side, levels=levels,
        pred_iou_thresh=params.auto_iou_threshold, stability_score_thresh=params.stability_threshold,
        box_nms_thresh=params.nms_iou, min_mask_region_area=params.min_region_area,
    )
    return generator.generate_segments(rgb)


def vocabulary_from_params(file: str, objects: Sequence[str], parts: Sequence[str]) -> Any:
    """The Vocabulary of the node's parameters: ``file`` ('' the shipped one) with its object / part names
    replaced by non-empty ``objects`` / ``parts``. ValueError naming the problem when it cannot be built."""
    import yaml

    from semsam_ros.semantics import Vocabulary, default_vocabulary

    try:
        base = Vocabulary.from_yaml(file) if file else default_vocabulary()
        return Vocabulary.from_dict({"objects": list(objects), "parts": list(parts)}, base=base)
    except (OSError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"vocabulary {file or '(shipped)'}: {type(exc).__name__}: {exc}") from exc


def build_hooks(params: NodeParams, device: str, want_points: Callable[[], bool] = lambda: False) -> tuple[Hooks, Any]:
    """(Hooks, labeller or None): post-processing, automatic mode, part-of links (and labels with semantics), 3D.

    ``want_points`` tells, per frame, whether the 3D step must keep each mask's points (for ~/points). With
    semantics, the vocabulary comes from the parameters ``vocabulary``, ``vocabulary_objects`` and
    ``vocabulary_parts`` and can be replaced at run time (``Hooks.set_vocabulary``); text embeddings are computed
    once per vocabulary (cached by content).
    """
    from semsam_ros.geometry import CameraModel, segments_to_3d
    from semsam_ros.semantics import build_hierarchy, select

    labeller = None
    if params.semantics:
        from semsam_ros.semantics import RegionLabeller
        from semsam_ros.types import DEFAULT_CLIP_MODEL

        vocabulary = vocabulary_from_params(params.vocabulary, params.vocabulary_objects, params.vocabulary_parts)
        labeller = RegionLabeller(params.clip_model or DEFAULT_CLIP_MODEL, vocabulary=vocabulary, device=device)

    def annotate(rgb: np.ndarray, segments: list) -> list:
        ordered = build_hierarchy(segments, order="given")
        if labeller is not None:
            labeller.label(rgb, ordered)
        return ordered

    def select_text(segments: list, text: str, rgb: np.ndarray, point: tuple[float, float] | None,
                    top_k: int) -> list:
        return [chosen.segment for chosen in select(segments, text, labeller, point=point, image=rgb, top_k=top_k)]

    def set_vocabulary(file: str, objects: Sequence[str], parts: Sequence[str]) -> bool:
        return labeller.set_vocabulary(vocabulary_from_params(file, objects, parts))

    def class_names() -> tuple[list[str], list[str]]:
        return list(labeller.vocabulary.objects), list(labeller.vocabulary.parts)

    def measure_3d(segments: list, depth_m: np.ndarray, camera_info: Any) -> list:
        return segments_to_3d(segments, depth_m, CameraModel.from_camera_info(camera_info),
                              return_points=want_points())

    semantics = labeller is not None
    hooks = Hooks(
        postprocess=_postprocess,
        automatic=_automatic,
        annotate=annotate,
        select_text=select_text if semantics else None,
        measure_3d=measure_3d,
        set_vocabulary=set_vocabulary if semantics else None,
        class_names=class_names if semantics else None,
    )
    return hooks, labeller
