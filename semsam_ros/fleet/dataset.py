"""The Parquet dataset of a fleet run: one row per segment of every SegmentArray the run wrote (see docs/fleet.md).

Read it with ``pyarrow.dataset.dataset(DIR / "segments")``, ``pandas.read_parquet``, Polars or Ray Data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from semsam_ros.bag.options import BagOptions
from semsam_ros.bag.prompts import output_topics
from semsam_ros.bag.reader import open_bag, read_messages

SEGMENT_ARRAY = "semsam_ros/msg/SegmentArray"
XYZ = ("x", "y", "z")


def segments_topics(options: BagOptions) -> dict[str, str]:
    """The SegmentArray topic written for each image topic (segments topic -> image topic)."""
    return {options.segments_topic or output_topics(t)["segments"]: t for t in options.image_topics}


def _schema() -> Any:
    import pyarrow as pa

    f32, i32, u8, u32 = pa.float32(), pa.int32(), pa.uint8(), pa.uint32()
    fields = [
        ("bag", pa.string()), ("topic", pa.string()), ("image_topic", pa.string()), ("bag_time_ns", pa.int64()),
        ("stamp_ns", pa.int64()), ("frame_id", pa.string()), ("frame", i32), ("height", u32), ("width", u32),
        ("model_id", pa.string()), ("segment_id", i32), ("prompt_id", i32), ("track_id", i32), ("track_state", u8),
        ("level", u8), ("kind", u8), ("iou_score", f32), ("stability_score", f32), ("label", pa.string()),
        ("label_score", f32), ("top_labels", pa.list_(pa.string())), ("top_label_scores", pa.list_(f32)),
        ("parent_id", i32), ("child_ids", pa.list_(i32)),
        ("bbox_x", u32), ("bbox_y", u32), ("bbox_width", u32), ("bbox_height", u32), ("area", u32),
        ("centroid_x", f32), ("centroid_y", f32), ("has_3d", pa.bool_()),
    ]
    fields += [(f"position_{a}", pa.float64()) for a in XYZ]
    fields += [(f"orientation_{a}", pa.float64()) for a in (*XYZ, "w")]
    for name in ("size", "centroid3d", "normal", "axis", "grasp_point", "grasp_normal"):
        fields += [(f"{name}_{a}", pa.float64()) for a in XYZ]
    fields += [("grasp_pixel_x", f32), ("grasp_pixel_y", f32), ("point_count", u32), ("valid_depth_ratio", f32),
               ("mask_size", pa.list_(i32)), ("mask_counts", pa.string())]
    return pa.schema(fields)


def segment_rows(name: str, msg: Any, topic: str, image_topic: str, time_ns: int, frame: int) -> list[dict]:
    """One row per segment of the SegmentArray ``msg`` (the mask as compressed COCO RLE of the full image)."""
    from semsam_ros.inference.postprocess import compress_rle, mask_to_rle
    from semsam_ros.ros.convert import msg_to_segments, stamp_to_ns

    rows = []
    for s, seg in zip(msg.segments, msg_to_segments(msg)):
        rle = compress_rle(mask_to_rle(seg.mask))
        row = {
            "bag": name, "topic": topic, "image_topic": image_topic, "bag_time_ns": time_ns,
            "stamp_ns": stamp_to_ns(msg.header.stamp), "frame_id": msg.header.frame_id, "frame": frame,
            "height": msg.height, "width": msg.width, "model_id": msg.model_id, "segment_id": s.id,
            "prompt_id": s.prompt_id, "track_id": s.track_id, "track_state": s.track_state, "level": s.level,
            "kind": s.kind, "iou_score": s.iou_score, "stability_score": s.stability_score, "label": s.label,
            "label_score": s.label_score, "top_labels": list(s.top_labels),
            "top_label_scores": [float(v) for v in s.top_label_scores], "parent_id": s.parent_id,
            "child_ids": [int(v) for v in s.child_ids], "bbox_x": s.bbox.x_offset, "bbox_y": s.bbox.y_offset,
            "bbox_width": s.bbox.width, "bbox_height": s.bbox.height, "area": s.area, "centroid_x": s.centroid_x,
            "centroid_y": s.centroid_y, "has_3d": bool(s.has_3d),
            "grasp_pixel_x": s.grasp_pixel_x, "grasp_pixel_y": s.grasp_pixel_y, "point_count": s.point_count,
            "valid_depth_ratio": s.valid_depth_ratio, "mask_size": rle["size"], "mask_counts": rle["counts"],
        }
        for column, value in (("position", s.pose.position), ("size", s.size), ("centroid3d", s.centroid),
                              ("normal", s.normal), ("axis", s.axis), ("grasp_point", s.grasp_point),
                              ("grasp_normal", s.grasp_normal)):
            row.update({f"{column}_{a}": float(getattr(value, a)) for a in XYZ})
        row.update({f"orientation_{a}": float(getattr(s.pose.orientation, a)) for a in (*XYZ, "w")})
        rows.append(row)
    return rows


def write_segments(name: str, bag: Path, options: BagOptions, dst: Path) -> int:
    """Write the Parquet file ``dst`` of every segment the output bag ``bag`` holds on ``options``' segments
    topics; ``frame`` counts the SegmentArrays of each topic in bag order. Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from semsam_ros.ros.typestore import make_typestore

    topics = segments_topics(options)
    rows: list[dict] = []
    frames: dict[str, int] = dict.fromkeys(topics, 0)
    with open_bag(bag) as reader:
        typestore = make_typestore(options.distro or "humble")  # SegmentArray is the same in every distro
        connections = [c for c in reader.connections if c.topic in topics and c.msgtype == SEGMENT_ARRAY]
        for conn, time_ns, raw in read_messages(reader, bag, connections):
            msg = typestore.deserialize_cdr(raw, SEGMENT_ARRAY)
            rows += segment_rows(name, msg, conn.topic, topics[conn.topic], time_ns, frames[conn.topic])
            frames[conn.topic] += 1
    schema = _schema()
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    pq.write_table(table, dst)
    return len(rows)
