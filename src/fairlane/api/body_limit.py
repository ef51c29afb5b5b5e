"""Refuse request bodies over ``api_max_body_bytes`` (413) before any route reads them.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is read up
to the limit and refused as soon as it passes it, so no request holds more than the limit
in memory.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fairlane.api.problems import Problem, problem_response


class BodyLimit:
    """ASGI middleware bounding request bodies."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def _receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, _receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = Problem(
            type="urn:fairlane:problem:body-too-large",
            title="Content too large",
            status=413,
            detail=f"request bodies are limited to {self.max_bytes} bytes (FAIRLANE_API_MAX_BODY_BYTES)",
        )
        await problem_response(problem)(scope, receive, send)
