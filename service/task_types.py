"""Which routes serve which task type; a task sent to another route is refused with the right one named.

The task type is recorded in the subnetwork file (``ken.SubnetworkInfo.task_type``) and decides
what the backbone owner's forward pass returns (``ken.taskmodel.task_outputs``) and where the task
is served.
"""

from __future__ import annotations

from collections.abc import Collection

from ken.taskmodel import (
    FEATURE_EXTRACTION,
    PAIR_SCORING,
    SEQUENCE_CLASSIFICATION,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
)
from service.errors import WrongTaskType

#: Every task type the service serves, with the routes that answer it.
ROUTES: dict[str, str] = {
    SEQUENCE_CLASSIFICATION: "POST /v1/predict or POST /v2/models/{task}/infer",
    FEATURE_EXTRACTION: "POST /v1/embed, POST /v1/embeddings or POST /v2/models/{task}/infer",
    TOKEN_CLASSIFICATION: "POST /v1/token-classification",
    PAIR_SCORING: "POST /v1/rerank",
    TEXT_GENERATION: "POST /v1/completions",
}
SERVED_TASK_TYPES = tuple(ROUTES)


def check_task_type(task: str, task_type: str, accepted: Collection[str]) -> None:
    """Raise :class:`WrongTaskType` (400) naming the routes for ``task_type`` unless this route accepts it."""
    if task_type in accepted:
        return
    routes = ROUTES.get(task_type)
    if routes is None:
        raise WrongTaskType(f"task {task!r} has task type {task_type!r}, which this service does not serve")
    raise WrongTaskType(
        f"task {task!r} is a {task_type} task: use {routes.replace('{task}', task)} "
        f"(this route serves {' and '.join(accepted)} tasks)"
    )
