"""The node's service answers without ROS: a request in, the Scheduler asked, the response filled.

The node registers these with rclpy; tests call them with rosbags messages.
"""
from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

from semsam_ros.ros.convert import prompt_from_msg
from semsam_ros.ros.scheduler import Scheduler

SERVICE_TIMEOUT_S = 30.0
VOCABULARY_LISTS = ("vocabulary_objects", "vocabulary_parts")


def segment(core: Scheduler, request: Any, response: Any, active: bool,
            timeout_s: float = SERVICE_TIMEOUT_S) -> Any:
    """``~/segment``: the SegmentArray of ``request.prompt`` on ``request.image`` (empty: the buffered frame nearest
    the prompt's stamp); ``success`` false with the reason otherwise."""
    if not active:
        response.success, response.message = False, "the node is not active"
        return response
    try:
        prompt = prompt_from_msg(request.prompt)
        image = request.image if request.image.width and request.image.height else None
        response.result = core.request(prompt, image).result(timeout=timeout_s)
        response.success, response.message = True, ""
    except FutureTimeout:
        response.success, response.message = False, f"no result within {timeout_s} s"
    except Exception as exc:  # noqa: BLE001  (bad prompt or image, inference failure: told to the caller)
        response.success, response.message = False, f"{type(exc).__name__}: {exc}"
    return response


def track(core: Scheduler, request: Any, response: Any) -> Any:
    """``~/track``: start tracks; all of the request's or none (a refused prompt stops those started before it)."""
    ids: list[int] = []
    try:
        for msg in request.prompts:
            ids += core.track(prompt_from_msg(msg))
    except ValueError as exc:
        core.untrack(ids)
        response.success, response.message, response.track_ids = False, str(exc), []
        return response
    response.success, response.message, response.track_ids = True, f"started {len(ids)} track(s)", ids
    return response


def untrack(core: Scheduler, request: Any, response: Any) -> Any:
    """``~/untrack``: stop the tracks ``request.track_ids`` (all with ``request.all``)."""
    stopped = core.untrack(None if request.all else [int(i) for i in request.track_ids])
    response.success, response.message, response.stopped = True, f"stopped {len(stopped)} track(s)", stopped
    return response


def clear_prompts(core: Scheduler, request: Any, response: Any) -> Any:
    """``~/clear_prompts`` (std_srvs/Trigger): forget sticky and queued prompts."""
    count = core.clear_prompts()
    response.success, response.message = True, f"cleared {count} sticky prompt(s)"
    return response


def set_vocabulary(core: Scheduler, request: Any, response: Any,
                   apply: Callable[[dict[str, list[str]]], str | None]) -> Any:
    """``~/set_vocabulary``: a non-empty list replaces the object (part) names, an empty one keeps them; both empty
    is a query. The change goes through ``apply`` (the node sets its ROS parameters with it, so that they always
    tell the vocabulary in use; it returns the reason of a refusal, or None)."""
    try:
        params = core.vocabulary_update(list(request.objects), list(request.parts))
    except ValueError as exc:
        response.success, response.message = False, str(exc)
    else:
        before = core.vocabulary_names()
        changes = {n: getattr(params, n) for n in VOCABULARY_LISTS if getattr(params, n) != getattr(core.params, n)}
        refusal = apply(changes) if changes else None
        response.success = refusal is None
        response.message = refusal or core.vocabulary_summary(core.vocabulary_names() != before)
    response.objects, response.parts = core.vocabulary_names()
    return response
