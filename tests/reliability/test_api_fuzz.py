"""API fuzzing: schemathesis generates requests for every operation of the service's OpenAPI schema
(valid and invalid data) against a real uvicorn on loopback; no answer may be a 5xx, and every answer
must conform to the schema (status code, content type, headers, body).

Bounded: ``EXAMPLES`` examples per operation and generation mode (about a minute on 2 cores).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES = 15
TOKEN = "fuzz-token"  # admin and API token alike, so one header opens every route
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The schema cannot say what makes an upload a valid subnetwork, and it does not carry the task-name
# pattern nor the per-request limits either (see docs/reliability.md), so schema-valid requests are
# legitimately refused with 400/422: positive_data_acceptance is left out; every other check runs.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


#: Known schema gaps outside this suite's files (reported in docs/reliability.md): a JSON body that does not
#: even parse answers FastAPI's 400, which predict/infer do not document. Matched on (operation, text).
def fuzz_operation(operation: Any, mode: Any, base_url: str, failures: list[str]) -> int:
    """Run the generated cases of one operation; failures are collected (not raised). Returns the call count."""
    calls = 0

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        nonlocal calls
        calls += 1
        try:
            case.call_and_validate(base_url=base_url, headers=AUTH, excluded_checks=EXCLUDED, timeout=30)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # schemathesis raises exception groups; collect them all
            failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # negative data for an operation without inputs
        fuzz()
    return calls


def test_every_operation_answers_without_5xx_and_within_its_schema(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> None:
    settings = make_settings(
        max_upload_bytes=200_000, max_inputs_per_request=8, max_input_chars=2000, admin_token=TOKEN, api_token=TOKEN
    )
    service = serve(settings)
    with service.client(TOKEN) as client:  # something to find: a stored task under a plausible name
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    failures: list[str] = []
    calls = 0
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            calls += fuzz_operation(operation, mode, service.url, failures)
    print(f"\nschemathesis: {len(operations)} operations, {calls} requests, {len(failures)} failures")
    assert not failures, "\n\n".join(dict.fromkeys(failures))
