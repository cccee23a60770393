"""Which model a request needs: its task, named ``task@version`` as Ray Serve's multiplexed model id.

The version in the id means a new upload is a new model to the router: requests for it are never
steered by a replica's record of having held the old one.
"""

from __future__ import annotations

import json

from service.store import validate_task

SEPARATOR = "@"
PREDICT_PATH = "/v1/predict"
V2_MODELS_PREFIX = "/v2/models/"
V2_INFER_SUFFIX = "/infer"
#: A request carrying ``X-Ken-Routing: plain`` skips task affinity (Ray's default routing); for measurements.
ROUTING_HEADER = "x-ken-routing"
PLAIN_ROUTING = "plain"


def model_id(task: str, version: int) -> str:
    return f"{task}{SEPARATOR}{version}"


def parse_model_id(value: str) -> tuple[str, int]:
    """``(task, version)`` from ``task@version``; ValueError if it is not one."""
    task, separator, version = value.rpartition(SEPARATOR)
    if not separator or not version.isdigit():
        raise ValueError(f"not a task@version model id: {value!r}")
    return validate_task(task), int(version)


def requested_task(method: str, path: str, body: bytes) -> str | None:
    """The valid task name an inference request names, else None (the replica's app answers what is wrong)."""
    if method != "POST":
        return None
    if path == PREDICT_PATH:
        try:
            task = json.loads(body).get("task")
        except (ValueError, AttributeError):  # not JSON, or not a JSON object
            return None
    elif path.startswith(V2_MODELS_PREFIX) and path.endswith(V2_INFER_SUFFIX):
        task = path[len(V2_MODELS_PREFIX) : -len(V2_INFER_SUFFIX)]
    else:
        return None
    try:
        return validate_task(task)
    except ValueError:
        return None
