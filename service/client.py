"""A small synchronous client of the v1 API (httpx)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from service.api.body import OCTET_STREAM
from service.api.rerank_schemas import Rank
from service.api.schemas import PredictResponse, SubnetworkList, SubnetworkManifest
from service.api.tokens_schemas import TokenClassificationResponse


class KenServiceError(Exception):
    """The service answered with an error status; ``message`` is its explanation."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


def service_root(url: str) -> str:
    """``url`` without a trailing ``/v1`` (routes are joined to the root: ``/v1/v1/...`` would be unknown)."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class KenClient:
    """``with KenClient("http://127.0.0.1:8000", token=...) as client: client.predict("news", ["text"])``.

    ``token`` is sent as a bearer token on every request (use the admin token for put/delete). ``url`` is
    the service's root; a trailing ``/v1`` (the API's prefix, an easy mistake) is dropped.
    """

    def __init__(
        self, url: str, *, token: str | None = None, timeout: float = 60.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=service_root(url), headers=headers, timeout=timeout, transport=transport)

    def put(self, task: str, data: bytes | Path) -> SubnetworkManifest:
        """Upload a subnetwork file (its bytes, or a path to it) as ``task``."""
        body = data.read_bytes() if isinstance(data, Path) else data
        response = self._http.put(f"/v1/subnetworks/{task}", content=body, headers={"Content-Type": OCTET_STREAM})
        return SubnetworkManifest.model_validate(self._json(response))

    def list(self) -> list[SubnetworkManifest]:
        return SubnetworkList.model_validate(self._json(self._http.get("/v1/subnetworks"))).subnetworks

    def get(self, task: str) -> SubnetworkManifest:
        return SubnetworkManifest.model_validate(self._json(self._http.get(f"/v1/subnetworks/{task}")))

    def delete(self, task: str) -> SubnetworkManifest:
        return SubnetworkManifest.model_validate(self._json(self._http.delete(f"/v1/subnetworks/{task}")))

    def predict(
        self, task: str, inputs: Sequence[str], *, top_k: int = 1, return_logits: bool = False
    ) -> PredictResponse:
        body = {"task": task, "inputs": list(inputs), "top_k": top_k, "return_logits": return_logits}
        return PredictResponse.model_validate(self._json(self._http.post("/v1/predict", json=body)))

    def embed(self, task: str, inputs: Sequence[str], *, normalize: bool | None = None) -> list[list[float]]:
        """One vector per input (``normalize`` None: as the task's pooling says)."""
        body = {"task": task, "inputs": list(inputs), "normalize": normalize}
        return self._json(self._http.post("/v1/embed", json=body))

    def classify_tokens(
        self, task: str, inputs: Sequence[str], *, aggregation_strategy: str = "simple"
    ) -> TokenClassificationResponse:
        body = {"task": task, "inputs": list(inputs), "aggregation_strategy": aggregation_strategy}
        return TokenClassificationResponse.model_validate(
            self._json(self._http.post("/v1/token-classification", json=body))
        )

    def rerank(self, task: str, query: str, texts: Sequence[str], *, raw_scores: bool = False) -> list[Rank]:
        """The texts' indices and scores, best first."""
        body = {"task": task, "query": query, "texts": list(texts), "raw_scores": raw_scores}
        return [Rank.model_validate(rank) for rank in self._json(self._http.post("/v1/rerank", json=body))]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KenClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise KenServiceError(response.status_code, detail if isinstance(detail, str) else str(detail))
