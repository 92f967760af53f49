"""Files of the offline LLM server: what ``client.files`` uploads and downloads, kept in memory.

:class:`FileStore` holds uploaded batch input files (purpose ``batch``) and the output and error
files the Batch API writes (purpose ``batch_output``), and renders each as OpenAI's ``file``
object (:meth:`StoredFile.as_object`). No I/O and no HTTP: the routes are in
:mod:`docbus.local.llm_server.batch_api`, the batches that read and write files in
:mod:`docbus.local.llm_server.batches`. The store is thread-safe because tests read it from the
test's thread while the server answers from its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file: its bytes and what OpenAI's file object says about it."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def as_object(self) -> dict[str, Any]:
        """The ``file`` object ``GET /v1/files/{id}`` returns."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


class FileStore:
    """Uploaded and generated files by id, in memory."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._files: dict[str, StoredFile] = {}
        self._lock = threading.Lock()

    def add(self, content: bytes, *, filename: str, purpose: str) -> StoredFile:
        stored = StoredFile(
            id=f"file-{uuid.uuid4().hex[:24]}",
            filename=filename,
            purpose=purpose,
            content=content,
            created_at=int(self._clock()),
        )
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        with self._lock:
            return self._files.pop(file_id, None) is not None

    def list(self, purpose: str | None = None) -> list[StoredFile]:
        """Files, newest first (as OpenAI lists them), of one ``purpose`` if given."""
        with self._lock:
            files = list(self._files.values())
        chosen = [f for f in files if purpose is None or f.purpose == purpose]
        return sorted(chosen, key=lambda f: f.created_at, reverse=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)
