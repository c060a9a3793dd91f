"""litdata's ``TokensLoader`` with its chunk maps behind one lock: the reader of a cached stream
(``data.stream_cache``, or a URL) maps and unmaps chunks from two threads, and litdata guards neither.

litdata's download thread maps a chunk once it is on disk (``pre_load_chunk``) and deletes chunks the cache has no
room for (``delete``), while the training thread unmaps the chunk it has finished (``close``). ``close`` drops the
chunk's buffer, then its memory map, in two steps; a download thread that maps the same chunk in between sees a map
without a buffer, drops it, and ``close`` then fails with ``KeyError: <chunk>`` (seen once in CI, in
``test_two_ranks_read_disjoint_chunks_that_cover_the_split_once``: the download thread was late for a chunk the
training thread had waited for, read and moved past). Here those four methods take one lock, so each runs whole
(``tests/test_stream.py`` holds that interleaving open). ``load_item_from_chunk`` is left unlocked: it waits for
the download thread, which would then wait for the lock; its own reads of the maps stay as litdata wrote them.

A module of its own, imported only where litdata is used, so that worker processes can unpickle the class.
"""

from __future__ import annotations

import threading
from typing import Any

import litdata


class TokensLoader(litdata.TokensLoader):
    """litdata's, locked. It keeps litdata's class name: litdata refuses a loader whose class name differs from the
    one in the chunks' ``index.json``."""

    def __init__(self, block_size: int | None = None) -> None:
        super().__init__(block_size=block_size)
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_lock", None)  # a lock does not pickle; each process has its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def _load_chunk(self, chunk_index: int, chunk_filepath: str) -> None:
        with self._lock:
            super()._load_chunk(chunk_index, chunk_filepath)

    def pre_load_chunk(self, chunk_index: int, chunk_filepath: str) -> None:
        with self._lock:
            super().pre_load_chunk(chunk_index, chunk_filepath)

    def close(self, chunk_index: int) -> None:
        with self._lock:
            super().close(chunk_index)

    def delete(self, chunk_index: int, chunk_filepath: str) -> None:
        with self._lock:
            super().delete(chunk_index, chunk_filepath)
