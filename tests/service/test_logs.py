"""Structured logs: one JSON object per record, with the ``extra`` fields and the exception."""

from __future__ import annotations

import json
import logging
import sys

from service.logs import JsonFormatter


def test_json_formatter_writes_extra_fields_and_exceptions() -> None:
    record = logging.LogRecord("service.test", logging.WARNING, __file__, 1, "swap %s", ("done",), None)
    record.task = "news"
    record.color_message = "\x1b[1mswap\x1b[0m"  # uvicorn's coloured duplicate is dropped
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "swap done" and entry["level"] == "WARNING" and entry["logger"] == "service.test"
    assert entry["task"] == "news" and "color_message" not in entry and entry["time"].endswith("+00:00")

    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "ValueError: bad" in json.loads(JsonFormatter().format(record))["exception"]
