"""Open-vocabulary region labeller: a CLIP model from Hugging Face ``transformers`` scores each mask.

Semantic-SAM recognises objects and parts with two decoupled heads whose outputs are compared with text
embeddings of an object and a part vocabulary (scaled cosine similarity). The released checkpoints carry no
text encoder, so this module keeps that interface with an external image-text model: each mask's masked crop is
embedded by the CLIP vision tower, and compared with CLIP text embeddings of both vocabularies. Levels 1-3 are
labelled from the object logits, levels 4-6 from the part logits, a part in the context of its parent object.

``transformers`` is imported only when a :class:`RegionLabeller` is built.
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..types import (
    DEFAULT_CLIP_MODEL,
    KIND_OBJECT,
    OBJECT_LEVELS,
    PART_LEVELS,
    UNKNOWN_LABEL,
    Segment,
    kind_of_level,
)
from .hierarchy import ancestors, build_hierarchy
from .vocab import Vocabulary, default_vocabulary

# OpenAI CLIP normalisation, used when the model folder has no preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _require_transformers() -> Any:
    """The ``transformers`` module, or an ImportError that says how to get it."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "RegionLabeller needs Hugging Face transformers (>= 4.40): pip install 'transformers>=4.40' "
            "or pip install 'semsam_ros[semantics]'"
        ) from e
    return transformers


def _preprocessor_config(source: str, cache_dir: str | None, allow_download: bool) -> dict:
    """The model's ``preprocessor_config.json`` as a dict, {} when it has none (local lookups unless allowed)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import EntryNotFoundError

    if Path(source).is_dir():
        path: Any = Path(source) / "preprocessor_config.json"
        path = path if path.is_file() else None
    elif allow_download:
        try:
            path = hf_hub_download(source, "preprocessor_config.json", cache_dir=cache_dir)
        except EntryNotFoundError:
            path = None
    else:
        path = try_to_load_from_cache(source, "preprocessor_config.json", cache_dir=cache_dir)
    if not isinstance(path, (str, Path)):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def crop_region(
    image: torch.Tensor,
    mask: np.ndarray,
    bbox: tuple[int, int, int, int],
    size: int,
    fill: torch.Tensor,
    margin: float = 0.15,
    context: float = 0.0,
) -> torch.Tensor:
    """Square masked crop of one region, resized to ``size`` x ``size`` (values in [0, 1], not normalised).

    ``image`` is (3, H, W) float in [0, 1]; ``bbox`` pixel XYXY (exclusive max) of the non-empty ``mask``. The
    square is centred on the box, its side the longer box side plus ``margin`` of it on each side. Pixels
    outside the mask, and outside the image, become ``fill`` (3,) blended with ``context`` of the original
    (0: pure fill, background fully suppressed).
    """
    x0, y0, x1, y1 = bbox
    side = max(1, round(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)))
    sx, sy = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
    h, w = mask.shape
    ix0, iy0, ix1, iy1 = max(sx, 0), max(sy, 0), min(sx + side, w), min(sy + side, h)
    fill = fill.view(3, 1, 1)
    canvas = fill.expand(3, side, side).clone()
    region = image[:, iy0:iy1, ix0:ix1]
    inside = torch.tensor(mask[iy0:iy1, ix0:ix1], device=image.device)
    canvas[:, iy0 - sy : iy1 - sy, ix0 - sx : ix1 - sx] = torch.where(
        inside, region, context * region + (1.0 - context) * fill
    )
    out = F.interpolate(canvas[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp_(0.0, 1.0)


@dataclass
class RegionScores:
    """The paper's interface, per mask (rows follow the segments given to :meth:`RegionLabeller.label`).

    ``object_logits`` (N, O) and ``part_logits`` (N, P) are ``logit_scale * cos(region, text)`` over the
    vocabulary's objects and parts; a row's part logits use the "part of a {object}" prompts when the mask lies
    in a labelled object. ``embeddings`` (N, D) are the L2-normalised region embeddings. Empty masks have zero
    rows throughout.
    """

    embeddings: np.ndarray
    object_logits: np.ndarray
    part_logits: np.ndarray
    logit_scale: float
    vocabulary: Vocabulary


class CacheInfo(NamedTuple):
    """Text-embedding cache statistics: lookups served, lookups computed, prompts run through the text tower."""

    hits: int
    misses: int
    prompts_encoded: int


class RegionLabeller:
    """Labels masks with an object or a part name from a vocabulary, using a CLIP model.

    ``model`` is a local folder holding a Hugging Face CLIP model (``config.json``, weights, tokenizer files)
    or a model id looked up in the local Hugging Face cache (``cache_dir``, default ``$HF_HOME/hub``); nothing
    is downloaded unless ``allow_download``. On CUDA the model runs in float16 unless ``dtype`` says otherwise.

    Labels: a mask gets the best name of its level's vocabulary (objects for levels 1-3, parts for 4-6), its
    softmax probability as ``label_score`` and the ``top_k`` hypotheses; when that probability is below
    ``min_score`` the label is ``"unknown"`` (``label_score`` and ``top_labels`` still tell the best guesses).
    The kind follows the level either way. Crops: square, ``margin`` of the box added on each side, pixels
    outside the mask grey (``context`` of the original kept), ``batch_size`` crops per forward pass. Text
    embeddings are cached by content, ``text_cache_size`` sets (one per vocabulary list and parent object).
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_CLIP_MODEL,
        vocabulary: Vocabulary | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        allow_download: bool = False,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 32,
        margin: float = 0.15,
        context: float = 0.0,
        min_score: float = 0.3,
        top_k: int = 5,
        text_cache_size: int = 256,
    ) -> None:
        if batch_size < 1 or top_k < 1 or text_cache_size < 1:
            raise ValueError("batch_size, top_k and text_cache_size must be >= 1")
        if margin < 0.0 or not 0.0 <= context <= 1.0:
            raise ValueError("margin must be >= 0 and context in [0, 1]")
        transformers = _require_transformers()
        source = str(model)
        hf_cache = None if cache_dir is None else str(cache_dir)
        local = not allow_download
        try:
            clip = transformers.CLIPModel.from_pretrained(source, local_files_only=local, cache_dir=hf_cache)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                source, local_files_only=local, cache_dir=hf_cache
            )
        except OSError as e:
            where = "folder" if Path(source).is_dir() else "local Hugging Face cache"
            raise FileNotFoundError(
                f"cannot load the CLIP model {source!r} from the {where}"
                f"{'' if allow_download else ' (downloads are off)'}: {e}\n"
                f"Get it onto this machine with `hf download {source}` (or `huggingface-cli download {source}`, "
                "or copy a folder saved with save_pretrained), or pass allow_download=True."
            ) from e
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.model = clip.to(self.device, self.dtype).eval()
        self.model_id = str(Path(source).resolve()) if Path(source).is_dir() else source
        pre = _preprocessor_config(source, hf_cache, allow_download)
        self.image_size = int(clip.config.vision_config.image_size)
        mean = torch.tensor(pre.get("image_mean", CLIP_MEAN), dtype=torch.float32, device=self.device)
        std = torch.tensor(pre.get("image_std", CLIP_STD), dtype=torch.float32, device=self.device)
        self._mean, self._std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self.logit_scale = float(clip.logit_scale.detach().float().exp())
        self.max_text_length = int(clip.config.text_config.max_position_embeddings)
        self.batch_size, self.margin, self.context = batch_size, margin, context
        self.min_score, self.top_k, self.text_cache_size = min_score, top_k, text_cache_size
        self._vocabulary = vocabulary if vocabulary is not None else default_vocabulary()
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._hits = self._misses = self._prompts = 0
        self._regions: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    # vocabulary and text side

    @property
    def vocabulary(self) -> Vocabulary:
        """The current vocabulary."""
        return self._vocabulary

    def set_vocabulary(self, vocabulary: Vocabulary) -> bool:
        """Replace the vocabulary (thread-safe for a concurrent :meth:`label`); True when it changed.

        Text embeddings are cached by content (model, exact prompts), so an unchanged or earlier-seen
        vocabulary costs no text encoding.
        """
        changed = vocabulary.digest != self._vocabulary.digest
        self._vocabulary = vocabulary
        return changed

    def cache_info(self) -> CacheInfo:
        """Hits, misses and prompts encoded by the text-embedding cache since construction."""
        return CacheInfo(self._hits, self._misses, self._prompts)

    @torch.inference_mode()
    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings (len(texts), D), float32 on the device."""
        out = []
        for start in range(0, len(texts), 256):
            tokens = self.tokenizer(
                list(texts[start : start + 256]),
                padding=True,
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            ).to(self.device)
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            out.append(F.normalize(self.model.text_projection(pooled).float(), dim=-1))
        self._prompts += len(texts)
        return torch.cat(out)

    def _class_embeddings(self, prompts: list[list[str]]) -> torch.Tensor:
        """(C, D) prompt-ensembled embeddings, one row per class from its prompts; cached by content."""
        key = hashlib.sha256(json.dumps([self.model_id, prompts], ensure_ascii=False).encode()).hexdigest()
        cached = self._text_cache.get(key)
        if cached is not None:
            self._hits += 1
            self._text_cache.move_to_end(key)
            return cached
        self._misses += 1
        flat = self._encode_texts([p for per_class in prompts for p in per_class])
        emb = F.normalize(flat.view(len(prompts), len(prompts[0]), -1).mean(dim=1), dim=-1)
        self._text_cache[key] = emb
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)
        return emb

    def object_text_embeddings(self, vocabulary: Vocabulary | None = None) -> torch.Tensor:
        """(O, D) text embeddings of the objects (default: the current vocabulary)."""
        v = vocabulary or self._vocabulary
        return self._class_embeddings([[t.format(object=o) for t in v.object_templates] for o in v.objects])

    def part_text_embeddings(self, parent: str | None = None, vocabulary: Vocabulary | None = None) -> torch.Tensor:
        """(P, D) text embeddings of the parts, as parts of a ``parent`` object when given."""
        v = vocabulary or self._vocabulary
        if parent is None:
            prompts = [[t.format(part=p) for t in v.part_templates] for p in v.parts]
        else:
            prompts = [[t.format(part=p, object=parent) for t in v.part_in_object_templates] for p in v.parts]
        return self._class_embeddings(prompts)

    def query_embeddings(self, queries: Sequence[str]) -> np.ndarray:
        """(Q, D) embeddings of free-text queries, each put through the object templates ("a photo of a {q}.")."""
        v = self._vocabulary
        prompts = [[t.format(object=q) for t in v.object_templates] for q in queries]
        return self._class_embeddings(prompts).cpu().numpy()

    # image side

    @torch.inference_mode()
    def encode_regions(self, image: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
        """(N, D) L2-normalised embeddings of the segments' masked crops of ``image`` (HxWx3 uint8 RGB).

        Empty masks give zero rows. The embeddings are remembered for :meth:`region_embeddings` as long as the
        Segment objects live.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
        for s in segments:
            if s.mask.shape != image.shape[:2]:
                raise ValueError(f"mask shape {s.mask.shape} differs from image shape {image.shape[:2]}")
        dim = int(self.model.config.projection_dim)
        out = np.zeros((len(segments), dim), dtype=np.float32)
        rows = [i for i, s in enumerate(segments) if s.area > 0]
        if rows:
            pixels = torch.tensor(image, device=self.device).permute(2, 0, 1).float().div_(255.0)
            fill = self._mean.view(3)
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                crops = torch.stack(
                    [
                        crop_region(pixels, segments[i].mask, segments[i].bbox, self.image_size, fill,
                                    self.margin, self.context)
                        for i in batch
                    ]
                )
                crops = ((crops - self._mean) / self._std).to(self.dtype)
                pooled = self.model.vision_model(pixel_values=crops).pooler_output
                emb = F.normalize(self.model.visual_projection(pooled).float(), dim=-1)
                out[batch] = emb.cpu().numpy()
        for s, row in zip(segments, out):
            key = id(s)
            self._regions[key] = (weakref.ref(s, lambda _, k=key: self._regions.pop(k, None)), row.copy())
        return out

    def region_embeddings(self, segments: Sequence[Segment], image: np.ndarray | None = None) -> np.ndarray:
        """(N, D) region embeddings, from the cache of earlier :meth:`encode_regions` / :meth:`label` calls.

        Segments never encoded are encoded from ``image``; without it they raise ValueError.
        """
        out: list[np.ndarray | None] = []
        for s in segments:
            entry = self._regions.get(id(s))
            out.append(entry[1] if entry is not None and entry[0]() is s else None)
        missing = [i for i, row in enumerate(out) if row is None]
        if missing:
            if image is None:
                raise ValueError(f"{len(missing)} segments were never labelled here; pass the frame's image")
            fresh = self.encode_regions(image, [segments[i] for i in missing])
            for i, row in zip(missing, fresh):
                out[i] = row
        dim = int(self.model.config.projection_dim)
        return np.stack(out) if out else np.zeros((0, dim), dtype=np.float32)

    # labelling

    def _assign(self, segments: Sequence[Segment], logits: torch.Tensor, names: Sequence[str]) -> None:
        """Fill the label fields of ``segments`` from their logits (one row each) over ``names``."""
        if not segments:
            return
        values, indices = logits.softmax(dim=-1).topk(min(self.top_k, len(names)), dim=-1)
        for segment, probs, best in zip(segments, values.tolist(), indices.tolist()):
            segment.kind = kind_of_level(segment.level)
            if segment.area == 0:
                segment.label, segment.label_score, segment.top_labels = UNKNOWN_LABEL, 0.0, []
                continue
            segment.top_labels = [(names[j], p) for p, j in zip(probs, best)]
            segment.label_score = probs[0]
            segment.label = names[best[0]] if probs[0] >= self.min_score else UNKNOWN_LABEL

    @torch.inference_mode()
    def label(self, image: np.ndarray, segments: Sequence[Segment]) -> RegionScores:
        """Label the segments of one frame in place (``label``, ``label_score``, ``top_labels``, ``kind``).

        Part context comes from the part-of links (``parent_id`` to ``id``): run :func:`build_hierarchy` first,
        or use :func:`annotate`. A part is scored as "the {part} of a {object}" where ``{object}`` is the label
        of its nearest ancestor that is a labelled object, and as a part alone otherwise.
        """
        vocabulary = self._vocabulary
        for s in segments:
            kind_of_level(s.level)  # reject levels outside 1..6 before any work
        index = {s.id: s for s in segments}
        if len(index) != len(segments) and any(s.parent_id >= 0 for s in segments):
            raise ValueError("segment ids are not unique but parent links are set; use build_hierarchy")
        emb = torch.from_numpy(self.encode_regions(image, segments)).to(self.device)
        object_logits = self.logit_scale * emb @ self.object_text_embeddings(vocabulary).T
        rows = [i for i, s in enumerate(segments) if s.level in OBJECT_LEVELS]
        self._assign([segments[i] for i in rows], object_logits[rows], vocabulary.objects)
        contexts: dict[str | None, list[int]] = {}
        for i, s in enumerate(segments):
            parent = next(
                (a.label for a in ancestors(s, index) if a.kind == KIND_OBJECT and a.label != UNKNOWN_LABEL), None
            )
            contexts.setdefault(parent, []).append(i)
        part_logits = torch.zeros(len(segments), len(vocabulary.parts), device=self.device)
        for parent, members in contexts.items():
            text = self.part_text_embeddings(parent, vocabulary)
            part_logits[members] = self.logit_scale * emb[members] @ text.T
        rows = [i for i, s in enumerate(segments) if s.level in PART_LEVELS]
        self._assign([segments[i] for i in rows], part_logits[rows], vocabulary.parts)
        return RegionScores(
            embeddings=emb.cpu().numpy(),
            object_logits=object_logits.cpu().numpy(),
            part_logits=part_logits.cpu().numpy(),
            logit_scale=self.logit_scale,
            vocabulary=vocabulary,
        )


def annotate(
    image: np.ndarray, segments: Sequence[Segment], labeller: RegionLabeller, min_inside: float = 0.9
) -> tuple[list[Segment], RegionScores]:
    """Part-of hierarchy then labels for one frame: the segments in id order and their scores (same order)."""
    ordered = build_hierarchy(segments, min_inside=min_inside)
    return ordered, labeller.label(image, ordered)
