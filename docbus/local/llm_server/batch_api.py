"""HTTP routes of the offline LLM server's Files and Batches APIs, as the ``openai`` SDK calls them.

:class:`BatchAPI` serves, under OpenAI's ``/v1`` and Azure OpenAI's ``/openai`` roots (so both
``AsyncOpenAI`` and ``AsyncAzureOpenAI`` work unchanged)::

    POST   /files                  upload (multipart: file, purpose=batch)
    GET    /files                  list (?purpose=)
    GET    /files/{id}             retrieve
    GET    /files/{id}/content     download
    DELETE /files/{id}             delete
    POST   /batches                create (input_file_id, endpoint, completion_window, metadata)
    GET    /batches                list, newest first (?after=&limit=)
    GET    /batches/{id}           retrieve
    POST   /batches/{id}/cancel    cancel

Every request passes the server's auth and the ``faults.quota_exhausted`` knob, as chat
completions do. Files are kept by :class:`~docbus.local.llm_server.files.FileStore`; batches and
their lifecycle are :mod:`docbus.local.llm_server.batches`, advanced whenever one is read.
:meth:`BatchAPI.stats` gives tests and benchmarks the counts. The server
(:mod:`docbus.local.llm_server.server`) builds one and adds its routes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from docbus.local.llm_server import errors
from docbus.local.llm_server.batches import CHAT_ENDPOINTS, BatchJob, create_job
from docbus.local.llm_server.config import LLMServerConfig
from docbus.local.llm_server.errors import APIError
from docbus.local.llm_server.files import FileStore

Authorize = Callable[[web.Request, LLMServerConfig], None]
_ROOTS = ("/v1", "/openai")
_WINDOWS = ("24h",)


class BatchAPI:
    """Files and batches of one server, in memory, with their routes."""

    def __init__(
        self,
        config: Callable[[], LLMServerConfig],
        authorize: Authorize,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._authorize = authorize
        self.clock = clock
        """The batches' clock (seconds); tests may swap in one they move by hand."""
        self.files = FileStore(lambda: self.clock())
        self._jobs: dict[str, BatchJob] = {}
        self._lock = threading.Lock()  # the server thread answers while a test thread reads
        self._created = 0
        self._refused = 0
        self._over_quota = 0
        self._queued_peak = 0
        self._hung: dict[str, int] = {}

    def add_routes(self, app: web.Application) -> None:
        for root in _ROOTS:
            router = app.router
            router.add_post(f"{root}/files", self._upload)
            router.add_get(f"{root}/files", self._list_files)
            router.add_get(f"{root}/files/{{file_id}}", self._get_file)
            router.add_get(f"{root}/files/{{file_id}}/content", self._file_content)
            router.add_delete(f"{root}/files/{{file_id}}", self._delete_file)
            router.add_post(f"{root}/batches", self._create)
            router.add_get(f"{root}/batches", self._list)
            router.add_get(f"{root}/batches/{{batch_id}}", self._retrieve)
            router.add_post(f"{root}/batches/{{batch_id}}/cancel", self._cancel)

    # -- figures for tests -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Batches created (refused at create; failed over the queued-token quota), by
        status, the requests they hold, and the most prompt tokens enqueued at once."""
        now = self.clock()
        with self._lock:
            jobs = list(self._jobs.values())
            for job in jobs:
                job.advance(now, self.files)
            by_status: dict[str, int] = {}
            for job in jobs:
                by_status[job.status] = by_status.get(job.status, 0) + 1
            return {
                "created": self._created,
                "refused": self._refused,
                "over_quota": self._over_quota,
                "queued_peak": self._queued_peak,
                "by_status": by_status,
                "requests": sum(len(job.lines) for job in jobs),
                "files": len(self.files),
                "hung": dict(self._hung),
            }

    def _enqueued(self) -> dict[str, int]:
        """Prompt tokens the batches not yet ended hold, per model (under the lock)."""
        now = self.clock()
        held: dict[str, int] = {}
        for job in self._jobs.values():
            job.advance(now, self.files)
            if job.enqueued and job.model is not None:
                held[job.model] = held.get(job.model, 0) + job.enqueued
        return held

    def job(self, batch_id: str) -> BatchJob | None:
        """The batch ``batch_id``, advanced to now (for tests that look inside)."""
        with self._lock:
            job = self._jobs.get(batch_id)
            if job is not None:
                job.advance(self.clock(), self.files)
            return job

    # -- files -------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.Response:
            form = await request.post()
            purpose = form.get("purpose")
            upload = form.get("file")
            if purpose != "batch":
                raise errors.bad_request(
                    "The offline server accepts files with purpose 'batch' only.", param="purpose"
                )
            if not isinstance(upload, web.FileField):
                raise errors.bad_request("Missing required parameter: 'file'.", param="file")
            content = upload.file.read()
            stored = self.files.add(content, filename=upload.filename, purpose=str(purpose))
            await self._hang("upload")
            return web.json_response(stored.as_object())

        return await self._guarded(request, act)

    async def _list_files(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.Response:
            files = self.files.list(request.query.get("purpose"))
            return web.json_response(
                {"object": "list", "data": [f.as_object() for f in files], "has_more": False}
            )

        return await self._guarded(request, act)

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.Response:
            return web.json_response(self._file(request).as_object())

        return await self._guarded(request, act)

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.StreamResponse:
            stored = self._file(request)
            if self._config().batch.hang != "download":
                return web.Response(body=stored.content, content_type="application/octet-stream")
            half = len(stored.content) // 2
            response = web.StreamResponse(headers={"Content-Length": str(len(stored.content))})
            response.content_type = "application/octet-stream"
            await response.prepare(request)
            await response.write(stored.content[:half])
            await self._hang("download")
            await response.write(stored.content[half:])
            await response.write_eof()
            return response

        return await self._guarded(request, act)

    async def _delete_file(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.Response:
            file_id = self._file(request).id
            self.files.delete(file_id)
            return web.json_response({"id": file_id, "object": "file", "deleted": True})

        return await self._guarded(request, act)

    def _file(self, request: web.Request) -> Any:
        file_id = request.match_info["file_id"]
        stored = self.files.get(file_id)
        if stored is None:
            raise _not_found("File", file_id)
        return stored

    # -- batches -----------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.Response:
            config = self._config()
            body = _json_object(await request.text())
            if config.batch.quota_at_create:
                with self._lock:
                    self._refused += 1
                raise errors.insufficient_quota()
            input_file_id = body.get("input_file_id")
            endpoint = body.get("endpoint")
            window = body.get("completion_window")
            metadata = body.get("metadata")
            if endpoint not in CHAT_ENDPOINTS:
                raise errors.bad_request(
                    f"Invalid value for 'endpoint': {endpoint!r}; the offline server batches "
                    f"{' and '.join(CHAT_ENDPOINTS)} only.",
                    param="endpoint",
                )
            if window not in _WINDOWS:
                raise errors.bad_request(
                    f"Invalid value for 'completion_window': {window!r}; supported: '24h'.",
                    param="completion_window",
                )
            if metadata is not None and not _is_metadata(metadata):
                raise errors.bad_request(
                    "Invalid 'metadata': up to 16 string values keyed by strings.",
                    param="metadata",
                )
            stored = self.files.get(str(input_file_id)) if input_file_id else None
            if stored is None:
                raise _not_found("File", str(input_file_id))
            if stored.purpose != "batch":
                raise errors.bad_request(
                    f"File {stored.id} has purpose {stored.purpose!r}; a batch needs 'batch'.",
                    param="input_file_id",
                )
            with self._lock:
                enqueued = self._enqueued()
                job = create_job(
                    content=stored.content,
                    input_file_id=stored.id,
                    endpoint=str(endpoint),
                    completion_window=str(window),
                    metadata=metadata,
                    now=self.clock(),
                    live=config,
                    enqueued=enqueued,
                )
                self._jobs[job.id] = job
                self._created += 1
                if any(p["code"] == "token_limit_exceeded" for p in job.problems):
                    self._over_quota += 1
                elif job.enqueued:
                    held = enqueued.get(job.model or "", 0) + job.enqueued
                    self._queued_peak = max(self._queued_peak, held)
                job.advance(self.clock(), self.files)
                answer = job.as_object()
            await self._hang("create")
            return web.json_response(answer)

        return await self._guarded(request, act)

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.Response:
            with self._lock:
                job = self._advanced(request.match_info["batch_id"])
                return web.json_response(job.as_object())

        return await self._guarded(request, act)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.Response:
            with self._lock:
                job = self._advanced(request.match_info["batch_id"])
                job.cancel(self.clock(), self.files)
                return web.json_response(job.as_object())

        return await self._guarded(request, act)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        async def act() -> web.Response:
            try:
                limit = int(request.query.get("limit", "20"))
            except ValueError as exc:
                raise errors.bad_request("Invalid 'limit'.", param="limit") from exc
            if not 1 <= limit <= 100:
                raise errors.bad_request("'limit' must be within [1, 100].", param="limit")
            after = request.query.get("after")
            now = self.clock()
            with self._lock:
                jobs = sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
                if after is not None:
                    ids = [job.id for job in jobs]
                    jobs = jobs[ids.index(after) + 1 :] if after in ids else []
                page = jobs[:limit]
                for job in page:
                    job.advance(now, self.files)
                data = [job.as_object() for job in page]
            return web.json_response(
                {
                    "object": "list",
                    "data": data,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                    "has_more": len(jobs) > limit,
                }
            )

        return await self._guarded(request, act)

    def _advanced(self, batch_id: str) -> BatchJob:
        job = self._jobs.get(batch_id)
        if job is None:
            raise _not_found("Batch", batch_id)
        job.advance(self.clock(), self.files)
        return job

    # -- shared ------------------------------------------------------------------------------

    async def _hang(self, point: str) -> None:
        """Hold the answer while ``batch.hang`` names ``point`` (see BatchConfig)."""
        if self._config().batch.hang != point:
            return
        with self._lock:
            self._hung[point] = self._hung.get(point, 0) + 1
        # the knob changes from another thread (a test) or the admin endpoint: no event to
        # wait on, so look again every 50 ms
        while self._config().batch.hang == point:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _guarded(self, request: web.Request, act: Callable[[], Any]) -> web.StreamResponse:
        try:
            config = self._config()
            self._authorize(request, config)
            if config.faults.quota_exhausted:
                raise errors.insufficient_quota()
            response: web.StreamResponse = await act()
            return response
        except APIError as exc:
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


def _json_object(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise errors.bad_request("We could not parse the JSON body of your request.") from exc
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    return body


def _is_metadata(value: object) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= 16
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    )


def _not_found(kind: str, object_id: str) -> APIError:
    return APIError(404, f"No such {kind}: {object_id}", param="id")
