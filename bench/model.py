"""Model benchmark (CPU, eager fp32): median latency and peak memory of the image encoder and the prompt decoder.

    python3 bench/model.py [--models tiny,swint] [--input-size 640x960] [--iters 5] [--threads N] [--out FILE]
        [--upsample-image 480x640] [--upsample-prompts 16]

Random weights (the SwinT preset and the tiny test config); prints JSON. Peak memory is the process's peak
resident set size while the component runs (and how far it rose above the size before), read from the Linux
high-water mark. ``upsample`` compares ``Predictor.predict(levels=(4,))`` with all six levels (tiny model,
short side 640): the upsampling step alone and the whole call.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchlib import MODELS, command_line, latency, machine, make_model, parse_size, peak_memory, time_ms, write_json
from semsam_ros.inference.backends.accuracy import guard_images, guard_prompts
from semsam_ros.inference.predictor import Predictor
from semsam_ros.types import LEVELS


@torch.inference_mode()
def bench_model(name: str, shape: tuple[int, int], prompts: list[int], iters: int, warmup: int) -> dict:
    model = make_model(name).eval()
    image = model.preprocess(torch.from_numpy(guard_images(shape)[0]).permute(2, 0, 1))
    with peak_memory(torch.device("cpu")) as memory:
        times = time_ms(lambda: model.image_encoder(image), torch.device("cpu"), iters, warmup)
    result = {"parameters": sum(p.numel() for p in model.parameters()), "image_encoder": {**latency(times), **memory}}
    mask_features, values = model.image_encoder(image)
    boxes = guard_prompts()
    for count in prompts:
        b = boxes[torch.arange(count) % len(boxes)]
        pb = torch.zeros(count, dtype=torch.long)
        with peak_memory(torch.device("cpu")) as memory:
            times = time_ms(
                lambda b=b, pb=pb: model.prompt_decoder(b, pb, mask_features, values),
                torch.device("cpu"),
                iters,
                warmup,
            )
        result[f"prompt_decoder_{count}"] = {**latency(times), **memory}
    return result


def bench_upsample(shape: tuple[int, int], prompts: int, iters: int, warmup: int) -> dict:
    """Peak memory and latency of predict(levels=(4,)) against all six levels, upsampling step and whole call."""
    predictor = Predictor(make_model("tiny"), short_side=640)
    predictor.set_image(guard_images(shape)[0])
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (prompts, 2)) * [shape[1] - 1, shape[0] - 1]
    result: dict = {"image": list(shape), "prompts": prompts, "short_side": 640}
    for name, levels in (("levels_4", (4,)), ("levels_all", LEVELS)):
        lowres, _ = predictor.predict_lowres(points, levels=levels)
        entry = {}
        for step, call in (
            ("upsample", lambda: predictor.upsample_logits(lowres)),
            ("predict", lambda levels=levels: predictor.predict(points, levels=levels)),
        ):
            with peak_memory(torch.device("cpu")) as memory:
                times = time_ms(call, torch.device("cpu"), iters, warmup)
            entry[step] = {**latency(times), **memory}
        result[name] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: tiny, swint")
    parser.add_argument("--input-size", type=parse_size, default=(640, 960), metavar="HxW", help="padded model input")
    parser.add_argument("--prompts", default="1,10")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--upsample-image", type=parse_size, default=(480, 640), metavar="HxW")
    parser.add_argument("--upsample-prompts", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = [int(p) for p in args.prompts.split(",")]
    result = {
        "benchmark": "model",
        "backend": "eager fp32 (CPU)",
        "command": command_line(),
        "machine": machine(torch.device("cpu")),
        "input_size": list(args.input_size),
        "models": {
            name: bench_model(name, args.input_size, prompts, args.iters, args.warmup)
            for name in args.models.split(",")
        },
        "upsample": bench_upsample(args.upsample_image, args.upsample_prompts, args.iters, args.warmup),
    }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
