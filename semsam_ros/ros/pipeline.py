"""The model side of the node, without ROS: load and warm up the predictor, and the ``Pipeline`` the frame
processor runs (post-processing, automatic mode, part-of links and labels, text selection, 3D).

Everything heavy (torch, the model, the automatic generator, semantics, geometry) is imported here, lazily, so
``semsam_ros.ros.frame_processor`` stays testable with fakes and the bag tools run the same pipeline as the node.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from semsam_ros.inference import options
from semsam_ros.ros.params import NodeParams
from semsam_ros.types import Segment, Segment3D

WARMUP_ASPECT = 4 / 3  # the warm-up frame: the common camera aspect at the model's own input size


def load_predictor(params: NodeParams) -> tuple[Any, str]:
    """(Predictor, model_id) for ``params`` (``inference.options.load_predictor``). Raises with the reason.

    The eager backend is warmed up on one blank 4:3 frame whose short side is ``input_size``, so the encoder runs
    once at the padded size a 4:3 camera gives (the frame is used as is, never resized). Compiled backends
    (compile, tensorrt) are built for the camera's own size on its first frame, or loaded from the engine cache
    when ``semsam build-engine`` prebuilt them, so a robot never compiles at launch.
    """
    from semsam_ros.io.checkpoint import CheckpointError

    if not params.checkpoint:
        raise ValueError("no checkpoint given (parameter 'checkpoint')")
    try:
        predictor, model_id = options.load_predictor(options.ModelOptions(
            params.checkpoint, params.model_config or None, params.device, params.input_size, params.backend,
            params.precision, max_long_side=params.max_long_side))
    except (CheckpointError, OSError) as exc:
        raise ValueError(f"cannot load {params.checkpoint!r}: {exc}") from exc
    except ValueError as exc:  # the device or the size does not fit this model or machine
        raise ValueError(f"{exc} (parameters device, input_size)") from exc
    if params.backend == "eager":
        height, width = params.input_size, round(params.input_size * WARMUP_ASPECT)
        predictor.set_embedding(predictor.encode(np.zeros((height, width, 3), dtype=np.uint8)))
        predictor.predict(points=np.array([[width / 2, height / 2]]))
        predictor.reset_image()
    return predictor, model_id


def free_gpu_memory() -> None:
    """Return the CUDA allocator's cached blocks (deactivate and cleanup call it after dropping embeddings)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelPipeline:
    """The node's ``Pipeline``: the real post-processing, automatic generator, hierarchy, labeller and 3D.

    With ``params.semantics`` a CLIP ``labeller`` names every mask; its vocabulary comes from the parameters
    ``vocabulary``, ``vocabulary_objects`` and ``vocabulary_parts`` and can be replaced at run time; text
    embeddings are computed once per vocabulary (cached by content). ``want_points`` tells, per frame, whether the
    3D step must also return each mask's points (for ~/points).
    """

    def __init__(self, params: NodeParams, device: str, want_points: Callable[[], bool] = lambda: False) -> None:
        self.labeller: Any = None
        self._want_points = want_points
        self._max_pixels = params.max_image_pixels
        if params.semantics:
            from semsam_ros.semantics import RegionLabeller, vocabulary_from
            from semsam_ros.types import DEFAULT_CLIP_MODEL

            vocabulary = vocabulary_from(params.vocabulary, params.vocabulary_objects, params.vocabulary_parts)
            self.labeller = RegionLabeller(params.clip_model or DEFAULT_CLIP_MODEL, vocabulary=vocabulary,
                                           device=device)

    @property
    def semantics(self) -> bool:
        return self.labeller is not None

    def postprocess(self, mask_logits: np.ndarray, iou_scores: np.ndarray, levels: Sequence[int], prompt_id: int,
                    point: tuple[float, float] | None, params: NodeParams) -> list[Segment]:
        from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt

        thresholds = PostprocessParams(
            iou_threshold=params.score_threshold, dedupe_iou=params.dedupe_iou, hole_area=params.min_region_area,
            island_area=params.min_region_area, keep_best_when_none=False,
        )
        return postprocess_prompt(mask_logits, iou_scores, thresholds, prompt_id=prompt_id, point=point,
                                  levels=levels)

    def automatic(self, predictor: Any, rgb: np.ndarray, levels: tuple[int, ...], params: NodeParams
                  ) -> list[Segment]:
        from semsam_ros.inference.amg import AutomaticMaskGenerator

        generator = AutomaticMaskGenerator(
            predictor, points_per_side=params.points_per_side, levels=levels,
            pred_iou_thresh=params.auto_iou_threshold, stability_score_thresh=params.stability_threshold,
            box_nms_thresh=params.nms_iou, min_mask_region_area=params.min_region_area,
        )
        return generator.generate_segments(rgb)

    def annotate(self, rgb: np.ndarray, segments: list[Segment]) -> list[Segment]:
        from semsam_ros.semantics import build_hierarchy

        ordered = build_hierarchy(segments, order="given")
        if self.labeller is not None:
            self.labeller.label(rgb, ordered)
        return ordered

    def select_text(self, segments: list[Segment], text: str, rgb: np.ndarray, point: tuple[float, float] | None,
                    top_k: int) -> list[Segment]:
        from semsam_ros.semantics import select

        chosen = select(segments, text, self.labeller, point=point, image=rgb, top_k=top_k)
        return [c.segment for c in chosen]

    def measure_3d(self, segments: list[Segment], depth_m: np.ndarray, camera_info: Any) -> list[Segment3D]:
        from semsam_ros.geometry import CameraModel, segments_to_3d

        camera = CameraModel.from_camera_info(camera_info, max_pixels=self._max_pixels)
        return segments_to_3d(segments, depth_m, camera,
                              return_points=self._want_points())

    def set_vocabulary(self, file: str, objects: Sequence[str], parts: Sequence[str]) -> bool:
        from semsam_ros.semantics import vocabulary_from

        return self.labeller.set_vocabulary(vocabulary_from(file, objects, parts))

    def class_names(self) -> tuple[list[str], list[str]]:
        return list(self.labeller.vocabulary.objects), list(self.labeller.vocabulary.parts)
