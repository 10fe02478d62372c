"""Overlay images of segments (PIL and numpy only): coloured masks, contours, level/score text, prompt markers."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from semsam_ros.types import LEVELS
from semsam_ros.viz.palette import segment_color
from semsam_ros.types import Segment

PROMPT_COLOR = (255, 32, 32)
_OUTLINE = (255, 255, 255)


def _font(image_width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font, sized to the image where Pillow can (>= 10.1)."""
    size = max(10, image_width // 50)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """Bool HxW: the mask pixels with a background 8-neighbour (or on the image border).

    A 3x3 erosion as eight shifted ANDs of the zero-padded mask (several times faster than scipy's).
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    padded = np.pad(mask, 1)
    eroded = mask.copy()
    for dy in range(3):
        for dx in range(3):
            if (dy, dx) != (1, 1):
                eroded &= padded[dy:dy + height, dx:dx + width]
    return mask & ~eroded


def level_caption(segment: Segment) -> str:
    """"L<level> <IoU score>": the default caption of a mask."""
    return f"L{segment.level} {segment.iou_score:.2f}"


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, color: tuple[int, int, int],
               font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    """Text on a dark box, kept inside the image."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    w, h = x1 - x0 + 4, y1 - y0 + 4
    width, height = draw.im.size
    x = min(max(0, xy[0]), max(0, width - w))
    y = min(max(0, xy[1]), max(0, height - h))
    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=(0, 0, 0))
    draw.text((x + 2 - x0, y + 2 - y0), text, fill=color, font=font)


def draw_prompts(
    draw: ImageDraw.ImageDraw,
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
    radius: int = 3,
) -> None:
    """Red squares (white outline) at pixel points, red rectangles for pixel XYXY boxes."""
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=PROMPT_COLOR, width=2)
    for x, y in points:
        cx, cy = int(x), int(y)
        draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=PROMPT_COLOR, outline=_OUTLINE)


def render_overlay(
    image: np.ndarray,
    segments: Sequence[Segment],
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
    alpha: float = 0.5,
    text: bool = True,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """HxWx3 uint8: masks blended in ``segment_color(segment.id)`` (largest first, so small ones stay visible),
    their contours, "L<level> <score>" (or ``captions``, one per segment) at each box corner, and the prompts.

    Each mask is drawn inside its ``bbox`` only (the Segment contract: the box holds every mask pixel), on the
    image viewed as rows of interleaved channels so that every operation runs over contiguous memory.
    """
    if captions is not None and len(captions) != len(segments):
        raise ValueError(f"{len(captions)} captions for {len(segments)} segments")
    caption_of = {id(s): c for s, c in zip(segments, captions)} if captions is not None else {}
    out = np.array(image, dtype=np.float32)
    height, width = out.shape[:2]
    rows = out.reshape(height, width * 3)
    ordered = sorted(segments, key=lambda s: -s.area)
    for seg in ordered:
        x0, y0, x1, y1 = (int(v) for v in seg.bbox)
        if x1 <= x0 or y1 <= y0:
            continue
        color = np.array(segment_color(seg.id), dtype=np.float32)
        mask = seg.mask[y0:y1, x0:x1]
        region = rows[y0:y1, 3 * x0:3 * x1]
        blended = region * (1 - alpha) + np.tile(color * alpha, x1 - x0)
        np.copyto(region, blended, where=np.repeat(mask, 3, axis=1))
        out[y0:y1, x0:x1][mask_contour(mask)] = color  # a crop's edge is background unless it is the image's edge
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    pil = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    if text:
        font = _font(pil.width)
        for seg in ordered:
            if seg.area:
                caption = caption_of.get(id(seg)) or level_caption(seg)
                _draw_text(draw, (seg.bbox[0], seg.bbox[1]), caption, segment_color(seg.id), font)
    draw_prompts(draw, points, boxes)
    return np.asarray(pil)


def render_level_grid(
    image: np.ndarray,
    segments: Sequence[Segment],
    levels: Sequence[int] = LEVELS,
    points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
    columns: int = 3,
    tile_width: int = 480,
) -> np.ndarray:
    """One tile per level of one prompt's segments, in ``levels`` order, ``columns`` tiles per row.

    A tile shows that level's segment (or the dimmed image with "L<level> not kept") with the prompt; tiles are
    scaled to at most ``tile_width`` pixels wide.
    """
    h, w = image.shape[:2]
    scale = min(1.0, tile_width / w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    rows = -(-len(levels) // columns)
    grid = Image.new("RGB", (tw * min(columns, len(levels)), th * rows), (0, 0, 0))
    font = _font(tw)
    for i, level in enumerate(levels):
        kept = [s for s in segments if s.level == level]
        if kept:
            tile = render_overlay(image, kept, points, boxes, text=False)
            caption = ", ".join(level_caption(s) for s in kept)
        else:
            tile = render_overlay((np.asarray(image) * 0.4).astype(np.uint8), [], points, boxes)
            caption = f"L{level} not kept"
        pil = Image.fromarray(tile).resize((tw, th), Image.BILINEAR) if scale < 1 else Image.fromarray(tile)
        _draw_text(ImageDraw.Draw(pil), (0, 0), caption, _OUTLINE, font)
        grid.paste(pil, ((i % columns) * tw, (i // columns) * th))
    return np.asarray(grid)
