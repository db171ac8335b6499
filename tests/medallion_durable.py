"""medallion's memory backend, saved to its file after every write: a TAXII server that keeps what
it accepted across a stop and start, as a production one does (medallion's other backend is MongoDB)."""

from __future__ import annotations

from typing import Any

from medallion.backends.memory_backend import MemoryBackend


class DurableMemoryBackend(MemoryBackend):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._filename = kwargs["filename"]

    def add_objects(self, api_root: str, collection_id: str, objs: Any, request_time: Any) -> Any:
        status = super().add_objects(api_root, collection_id, objs, request_time)
        self.save_data_to_file(self._filename)
        return status
