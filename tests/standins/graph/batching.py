"""Requests below /v1.0: the request log, injected faults (throttling, outages) and JSON batching."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.standins.graph.model import WRITE_METHODS, Answer, Fault, Logged, error
from tests.standins.graph.state import _State


class BatchingMixin(_State):
    def _record(self, method: str, path: str, query: str, status: int, in_batch: bool, body: Any) -> None:
        with self._lock:
            self.log.append(Logged(method, unquote(path), unquote(query), status, in_batch, body))

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method in (method, "*") and fault.pattern.search(unquote(path)):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _graph(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, *, in_batch: bool
    ) -> Answer:
        parsed: Any = None
        if body and not headers.get("content-type"):
            # Worst plausible for a body without a media type: refused (415), never guessed.
            self._record(method, path, query, 415, in_batch, None)
            return 415, error("UnsupportedMediaType", "A Content-Type header is required with a body."), {}
        if body and "json" in headers.get("content-type", ""):
            try:
                parsed = json.loads(body)
            except ValueError:
                status, payload = 400, error("BadRequest", "Unable to read JSON request payload.")
                self._record(method, path, query, status, in_batch, None)
                return status, payload, {}
        fault = self._fault(method, path)
        if fault is not None and not fault.commit:
            return self._faulted(fault, method, path, query, in_batch, parsed)
        if path == "/$batch" and method == "POST" and not in_batch:
            self._record(method, path, query, 200, False, None)
            return self._batch(parsed)
        with self._lock:
            status, payload, extra = self._route(method, path, parse_qs(query), headers, body, parsed)
        if fault is not None:
            return self._faulted(fault, method, path, query, in_batch, parsed)
        self._record(method, path, query, status, in_batch, parsed if method in WRITE_METHODS else None)
        return status, payload, extra

    def _faulted(self, fault: Fault, method: str, path: str, query: str, in_batch: bool, parsed: Any) -> Answer:
        self._record(method, path, query, fault.status, in_batch, parsed if method in WRITE_METHODS else None)
        extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        codes = {429: "TooManyRequests", 503: "serviceNotAvailable", 504: "UnknownError", 500: "generalException"}
        payload = fault.body or error(codes.get(fault.status, "BadRequest"), f"Injected {fault.status}")
        return fault.status, payload, extra

    def _batch(self, payload: Any) -> Answer:
        requests = (payload or {}).get("requests")
        if not isinstance(requests, list) or not requests:
            return 400, error("BadRequest", "Invalid batch payload format."), {}
        if len(requests) > 20:
            return 400, error("BadRequest", "Number of batch request steps exceeds the maximum of 20."), {}
        ids = [str(r.get("id")) for r in requests]
        if len(set(ids)) != len(ids):
            return 400, error("BadRequest", "Batch request contains duplicate ids."), {}
        statuses: dict[str, int] = {}
        responses = []
        for request in requests:
            rid = str(request["id"])
            depends = [str(d) for d in request.get("dependsOn") or []]
            if any(d not in ids for d in depends):
                return 400, error("BadRequest", "Batch dependsOn refers to an unknown request id."), {}
            if any(not 200 <= statuses.get(d, 0) < 300 for d in depends):
                statuses[rid] = 424
                responses.append({"id": rid, "status": 424, "body": error("FailedDependency", "Failed dependency.")})
                continue
            sub_headers_check = {str(k).lower() for k in (request.get("headers") or {})}
            if request.get("body") is not None and "content-type" not in sub_headers_check:
                # "If a body is included with the request, the headers object must contain a value for
                # Content-Type" (https://learn.microsoft.com/en-us/graph/json-batching); worst plausible: the
                # whole batch is refused.
                return 400, error("BadRequest", "Content-Type header must be specified for a request with a body."), {}
            url = str(request.get("url", ""))
            if not url.startswith("/"):
                url = "/" + url
            sub = urlsplit(url)
            sub_headers = {str(k).lower(): str(v) for k, v in (request.get("headers") or {}).items()}
            body = request.get("body")
            raw = b""
            if body is not None:
                if "json" in sub_headers.get("content-type", "application/json"):
                    raw = json.dumps(body).encode("utf-8")
                    sub_headers.setdefault("content-type", "application/json")
                else:
                    raw = base64.b64decode(body)
            status, answer, extra = self._graph(
                str(request.get("method", "GET")).upper(), sub.path, sub.query, sub_headers, raw, in_batch=True
            )
            statuses[rid] = status
            item: dict[str, Any] = {"id": rid, "status": status, "headers": dict(extra)}
            if isinstance(answer, bytes):
                item["headers"]["Content-Type"] = item["headers"].pop("content-type", "application/octet-stream")
                item["body"] = base64.b64encode(answer).decode("ascii")
            elif answer is not None:
                item["headers"]["Content-Type"] = "application/json"
                item["body"] = answer
            responses.append(item)
        # "Responses to the batched requests might appear in a different order" (json-batching docs): the
        # stand-in always reverses them, so a client that matches by position fails here.
        return 200, {"responses": list(reversed(responses))}, {}
