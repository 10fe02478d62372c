"""Labels and text selection for the image commands (segment, auto): options, checks, the labeller, JSON fields."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from semsam_ros.cli.args import UserError, device
from semsam_ros.text import one_line
from semsam_ros.types import DEFAULT_CLIP_MODEL, KIND_NAMES


def parse_names(text: str) -> list[str]:
    """'mug,kettle lid,drawer': comma-separated names."""
    names = [" ".join(n.split()) for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"names must be comma-separated and non-empty, like mug,bottle; got {text!r}")
    return names


def add_semantics_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("semantics", "labels and text selection with a CLIP model (needs transformers "
                                      "and a CLIP model on this machine; see docs/semantics.md)")
    group.add_argument("--labels", action="store_true",
                       help="label every kept mask: object names for levels 1-3, part names for levels 4-6")
    group.add_argument("--text", metavar="TEXT",
                       help='keep the masks that best match TEXT, e.g. "handle", "mug lid" (labels them all too)')
    group.add_argument("--text-top-k", type=int, default=3, metavar="K", help="matches kept for --text (default: 3)")
    group.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, metavar="DIR|ID",
                       help=f"a CLIP model folder, or a model id in the local Hugging Face cache "
                            f"(default: {DEFAULT_CLIP_MODEL})")
    group.add_argument("--download-clip", action="store_true",
                       help="download the CLIP model from the Hugging Face Hub if it is not cached")
    group.add_argument("--vocabulary", metavar="YAML", help="vocabulary file (default: the shipped one)")
    group.add_argument("--objects", type=parse_names, metavar="A,B", help="object names replacing the vocabulary's")
    group.add_argument("--parts", type=parse_names, metavar="A,B", help="part names replacing the vocabulary's")
    group.add_argument("--min-label-score", type=float, default=0.3,
                       help='a mask whose best label scores below this is labelled "unknown" (default: 0.3)')


def check_semantics(args: argparse.Namespace) -> Any:
    """The Vocabulary for --labels/--text (None when neither is given), after the cheap checks: the query, the
    options, transformers and the vocabulary. UserError naming what to do otherwise."""
    if not (args.labels or args.text is not None):
        return None
    from semsam_ros.semantics import parse_query, vocabulary_from
    from semsam_ros.semantics.labeller import _require_transformers

    if args.text is not None:
        try:
            parse_query(args.text)
        except ValueError:
            raise UserError(f"--text {args.text!r} names nothing to select") from None
    if args.text_top_k < 1:
        raise UserError(f"--text-top-k must be at least 1, got {args.text_top_k}")
    if not 0.0 <= args.min_label_score <= 1.0:
        raise UserError(f"--min-label-score must lie in [0, 1], got {args.min_label_score}")
    try:
        _require_transformers()
    except ImportError:
        raise UserError("--labels and --text need Hugging Face transformers: pip install 'transformers>=4.40' "
                        "(or pip install 'semsam_ros[semantics]')") from None
    try:
        return vocabulary_from(args.vocabulary, args.objects, args.parts)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def load_labeller(args: argparse.Namespace, vocabulary: Any) -> Any:
    """RegionLabeller for --clip-model on --device; UserError (one line, what to do) when it does not load."""
    from semsam_ros.semantics import RegionLabeller

    from transformers.utils import logging as hf_logging

    torch_device = device(args)
    source = args.clip_model
    bars = hf_logging.is_progress_bar_enabled()
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        return RegionLabeller(source, vocabulary=vocabulary, device=torch_device, allow_download=args.download_clip,
                              min_score=args.min_label_score)
    except (OSError, ValueError) as exc:
        if Path(source).is_dir():
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot load a CLIP model from the folder {source}: {reason}") from None
        if args.download_clip:
            raise UserError(f"cannot download the CLIP model {source!r}: {one_line(str(exc), 200)}") from None
        raise UserError(
            f"the CLIP model {source!r} is not on this machine: download it once with `hf download {source}`, "
            "pass --clip-model DIR (a folder saved with save_pretrained), or add --download-clip"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def annotate_segments(image: np.ndarray, segments: list, labeller: Any) -> None:
    """Part-of links (ids = positions in ``segments``) and labels, in place."""
    from semsam_ros.semantics import build_hierarchy

    build_hierarchy(segments, order="given")
    labeller.label(image, segments)


def semantic_fields(seg: Any) -> dict[str, Any]:
    """What --labels adds to a mask's JSON record."""
    return {
        "id": seg.id, "parent_id": seg.parent_id, "child_ids": list(seg.child_ids), "kind": KIND_NAMES[seg.kind],
        "label": seg.label, "label_score": seg.label_score,
        "top_labels": [[name, score] for name, score in seg.top_labels],
    }


def match_record(selection: Any) -> dict[str, Any]:
    """One --text match in the JSON: the mask's id, level and label, and its scores."""
    seg = selection.segment
    return {"id": seg.id, "level": seg.level, "label": seg.label, "score": selection.score,
            "similarity": selection.similarity, "match": selection.match}


def text_caption(selection: Any) -> str:
    return f"{selection.segment.label} {selection.score:.2f}"
