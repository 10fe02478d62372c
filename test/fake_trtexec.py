#!/usr/bin/env python3
"""A stand-in for TensorRT's ``trtexec`` (the engine builder alone is faked).

It checks what it is given the way trtexec would fail: ``--onnx`` must name an ONNX file that loads and passes
``onnx.checker``, ``--saveEngine`` must be given, precision flags must be known. Each build is appended as one
JSON line (arguments, the ONNX inputs' names, shapes and element types) to ``$FAKE_TRTEXEC_LOG``. The "engine" it
saves is the ONNX file's bytes, which the tests run with onnxruntime in place of the TensorRT runtime.
"""
import json
import os
import shutil
import sys

import onnx

KNOWN = {"--fp16", "--bf16", "--noTF32", "--stronglyTyped"}


def main(argv: list[str]) -> int:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec " + " ".join(argv))
    if argv == ["--help"]:
        return 0
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    flags = [a for a in argv if "=" not in a]
    if "--onnx" not in options or "--saveEngine" not in options or set(flags) - KNOWN:
        print(f"[E] bad arguments: {argv}")
        return 1
    model = onnx.load(options["--onnx"])
    onnx.checker.check_model(model, full_check=True)
    inputs = [
        {"name": v.name, "shape": [d.dim_value for d in v.type.tensor_type.shape.dim],
         "elem_type": v.type.tensor_type.elem_type}
        for v in model.graph.input
    ]
    shutil.copyfile(options["--onnx"], options["--saveEngine"])
    with open(os.environ["FAKE_TRTEXEC_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"argv": argv, "flags": flags, "inputs": inputs}) + "\n")
    print("&&&& PASSED TensorRT.trtexec")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
