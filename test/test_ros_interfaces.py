"""msg/ and srv/: parsed by the real ROS 2 IDL tools, registered in rosbags typestores, CDR round trips."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from semsam_ros.io.resources import share_dirs  # noqa: E402
from semsam_ros.ros.typestore import find_interface_dir, interface_types, make_typestore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MSGS = sorted(ROOT.glob("msg/*.msg"))
SRVS = sorted(ROOT.glob("srv/*.srv"))
SYSTEM_PYTHON = "/usr/bin/python3"

# Runs under the system python, where Debian's python3-rosidl lives: parse every file with rosidl_adapter (what
# rosidl_generate_interfaces runs first) and, when empy is there for its templates, translate to IDL and parse
# that with rosidl_parser too. Prints, on its last line, {type name: [[field name, field type], ...]} and whether IDL was checked.
ROSIDL_SCRIPT = r"""
import json, pathlib, sys, tempfile
from rosidl_adapter.parser import parse_message_file, parse_service_file
root = pathlib.Path(sys.argv[1])
fields = {}
def record(name, spec):
    fields[name] = [[f.name, str(f.type)] for f in spec.fields] + [[c.name, c.type] for c in spec.constants]
for path in sorted(root.glob("msg/*.msg")):
    record(f"semsam_ros/msg/{path.stem}", parse_message_file("semsam_ros", str(path)))
for path in sorted(root.glob("srv/*.srv")):
    srv = parse_service_file("semsam_ros", str(path))
    record(f"semsam_ros/srv/{path.stem}_Request", srv.request)
    record(f"semsam_ros/srv/{path.stem}_Response", srv.response)
try:
    import em  # noqa: F401  (rosidl_adapter's templates need empy)
except ImportError:
    idl = "empy is not installed for the system python (Debian python3-empy)"
else:
    from rosidl_adapter.msg import convert_msg_to_idl
    from rosidl_adapter.srv import convert_srv_to_idl
    from rosidl_parser.definition import IdlLocator, Message, Service
    from rosidl_parser.parser import parse_idl_file
    out = pathlib.Path(tempfile.mkdtemp())
    count = 0
    for sub, convert in (("msg", convert_msg_to_idl), ("srv", convert_srv_to_idl)):
        for path in sorted(root.glob(f"{sub}/*.{sub}")):
            idl_path = convert(root, "semsam_ros", path.relative_to(root), out / sub)
            content = parse_idl_file(IdlLocator(out, idl_path.relative_to(out))).content
            count += len(content.get_elements_of_type(Message)) + len(content.get_elements_of_type(Service))
    idl = count
print(json.dumps({"fields": fields, "idl": idl}))
"""


@pytest.fixture(scope="module")
def rosidl() -> dict:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is absent, so are the ROS 2 IDL tools (Debian python3-rosidl)")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import rosidl_adapter, rosidl_parser"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the ROS 2 IDL tools are not installed for the system python (apt install python3-rosidl)")
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", ROSIDL_SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # the IDL converters print progress lines first


def test_interface_files_exist():
    assert [p.name for p in MSGS] == ["Prompt.msg", "Segment.msg", "SegmentArray.msg"]
    assert [p.name for p in SRVS] == ["Segment.srv", "SetVocabulary.srv", "Track.srv", "Untrack.srv"]


def test_rosidl_adapter_parses_every_file(rosidl):
    assert sorted(rosidl["fields"]) == [
        "semsam_ros/msg/Prompt",
        "semsam_ros/msg/Segment",
        "semsam_ros/msg/SegmentArray",
        "semsam_ros/srv/Segment_Request",
        "semsam_ros/srv/Segment_Response",
        "semsam_ros/srv/SetVocabulary_Request",
        "semsam_ros/srv/SetVocabulary_Response",
        "semsam_ros/srv/Track_Request",
        "semsam_ros/srv/Track_Response",
        "semsam_ros/srv/Untrack_Request",
        "semsam_ros/srv/Untrack_Response",
    ]
    segment = dict(rosidl["fields"]["semsam_ros/msg/Segment"])
    assert segment["bbox"] == "sensor_msgs/RegionOfInterest" and segment["mask"] == "sensor_msgs/Image"
    assert segment["pose"] == "geometry_msgs/Pose" and segment["size"] == "geometry_msgs/Vector3"
    assert segment["centroid"] == "geometry_msgs/Point" and segment["valid_depth_ratio"] == "float32"
    assert segment["normal"] == segment["axis"] == "geometry_msgs/Vector3" and segment["point_count"] == "uint32"
    assert segment["top_labels"] == "string[]" and segment["top_label_scores"] == "float32[]"
    assert segment["KIND_OBJECT"] == "uint8"
    assert segment["track_id"] == "int32" and segment["track_state"] == segment["TRACK_LOST"] == "uint8"
    assert dict(rosidl["fields"]["semsam_ros/msg/Prompt"])["track"] == "bool"
    assert rosidl["fields"]["semsam_ros/srv/Track_Request"] == [["prompts", "semsam_ros/Prompt[]"]]
    assert dict(rosidl["fields"]["semsam_ros/srv/Track_Response"])["track_ids"] == "int32[]"
    assert rosidl["fields"]["semsam_ros/srv/Untrack_Request"] == [["track_ids", "int32[]"], ["all", "bool"]]
    assert dict(rosidl["fields"]["semsam_ros/srv/Untrack_Response"])["stopped"] == "int32[]"
    assert dict(rosidl["fields"]["semsam_ros/srv/Segment_Request"])["prompt"] == "semsam_ros/Prompt"
    assert rosidl["fields"]["semsam_ros/srv/SetVocabulary_Request"] == [["objects", "string[]"], ["parts", "string[]"]]
    response = dict(rosidl["fields"]["semsam_ros/srv/SetVocabulary_Response"])
    assert response == {"success": "bool", "message": "string", "objects": "string[]", "parts": "string[]"}


def test_rosidl_and_rosbags_agree_on_fields(rosidl):
    types = interface_types()
    for name, fields in rosidl["fields"].items():
        consts, members = types[name][:2]
        assert [f[0] for f in fields if not f[0].isupper()] == [m[0] for m in members], name
        assert sorted(f[0] for f in fields if f[0].isupper()) == sorted(c[0] for c in consts), name


def test_idl_translation_and_parse(rosidl):
    if not isinstance(rosidl["idl"], int):
        pytest.skip(f"msg -> IDL translation not checked: {rosidl['idl']}")
    assert rosidl["idl"] == len(MSGS) + len(SRVS)


def test_interfaces_found_in_the_checkout():
    assert find_interface_dir() == ROOT


def test_interfaces_found_through_the_ament_index(tmp_path, monkeypatch):
    share = tmp_path / "share"
    (share / "ament_index/resource_index/packages").mkdir(parents=True)
    (share / "ament_index/resource_index/packages/semsam_ros").touch()
    shutil.copytree(ROOT / "msg", share / "semsam_ros/msg")
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"/nonexistent:{tmp_path}")
    assert share / "semsam_ros" in share_dirs()
    types = interface_types(share / "semsam_ros")
    assert sorted(types) == ["semsam_ros/msg/Prompt", "semsam_ros/msg/Segment", "semsam_ros/msg/SegmentArray"]


def test_bad_service_file(tmp_path):
    (tmp_path / "msg").mkdir()
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv/Broken.srv").write_text("int32 a\n")
    with pytest.raises(ValueError, match="exactly one '---'"):
        interface_types(tmp_path)


def test_unknown_distro():
    with pytest.raises(ValueError, match="unknown ROS 2 distro 'noetic'"):
        make_typestore("noetic")


def sample(store, name: str):
    """A message of ``name`` with every field set to a distinctive value (recursively)."""
    cls = store.types[name]
    values = {}
    for field_name, (kind, detail) in store.fielddefs[name][1]:
        values[field_name] = value_of(store, kind, detail, field_name)
    return cls(**values)


def value_of(store, kind, detail, field_name):
    from rosbags.interfaces import Nodetype

    if kind == Nodetype.BASE:
        base = detail[0]
        if base == "string":
            return f"{field_name}-value"
        if base == "bool":
            return True
        if base.startswith("float"):
            return 0.5
        return 3 if base.startswith("uint") or base in ("octet", "byte", "char") else -3
    if kind == Nodetype.NAME:
        return sample(store, detail)
    inner_kind, inner_detail = detail[0]
    if inner_kind == Nodetype.BASE and inner_detail[0] != "string":
        return np.array([1, 2, 3], dtype=np.dtype(inner_detail[0]))
    return [value_of(store, inner_kind, inner_detail, field_name) for _ in range(2)]


def assert_same(a, b, path="msg"):
    if hasattr(a, "__msgtype__"):
        for name in a.__dataclass_fields__:
            assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
@pytest.mark.parametrize(
    "name",
    [
        "semsam_ros/msg/Segment",
        "semsam_ros/msg/SegmentArray",
        "semsam_ros/msg/Prompt",
        "semsam_ros/srv/Segment_Request",
        "semsam_ros/srv/Segment_Response",
        "semsam_ros/srv/SetVocabulary_Request",
        "semsam_ros/srv/SetVocabulary_Response",
        "semsam_ros/srv/Track_Request",
        "semsam_ros/srv/Track_Response",
        "semsam_ros/srv/Untrack_Request",
        "semsam_ros/srv/Untrack_Response",
    ],
)
def test_cdr_round_trip(distro, name):
    store = make_typestore(distro)
    msg = sample(store, name)
    raw = store.serialize_cdr(msg, name)
    assert_same(msg, store.deserialize_cdr(raw, name))


def test_every_interface_is_generated_by_cmake():
    text = (ROOT / "CMakeLists.txt").read_text()
    listed = re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"', text)
    assert sorted(listed) == sorted(str(p.relative_to(ROOT)) for p in MSGS + SRVS)


def test_kind_constants_match_the_segment_record():
    from semsam_ros.types import KIND_OBJECT, KIND_PART, KIND_UNKNOWN

    segment = make_typestore().types["semsam_ros/msg/Segment"]
    assert (segment.KIND_UNKNOWN, segment.KIND_OBJECT, segment.KIND_PART) == (KIND_UNKNOWN, KIND_OBJECT, KIND_PART)
    from semsam_ros.types import TRACK_STATE_NAMES

    assert {getattr(segment, f"TRACK_{name.upper()}"): name for name in TRACK_STATE_NAMES.values()} == TRACK_STATE_NAMES


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_bag_metadata_can_be_generated(distro):
    store = make_typestore(distro)
    msgdef, _ = store.generate_msgdef("semsam_ros/msg/SegmentArray")
    assert "MSG: semsam_ros/Segment" in msgdef and "MSG: sensor_msgs/RegionOfInterest" in msgdef
    assert store.hash_rihs01("semsam_ros/msg/SegmentArray").startswith("RIHS01_")
