"""Lightning's checkpoint writes made atomic on local disks.

Lightning writes a checkpoint through an fsspec transaction: a temporary file in ``$TMPDIR``, then a move with
no fsync. When ``$TMPDIR`` is another file system (a node's local disk under a shared project folder, the usual
cluster layout), the move is a copy and an unlink, so a job killed during it leaves a truncated ``last.ckpt``.
Here a local checkpoint is written beside its final name (``.lit_llm-tmp-*``, swept when a run starts),
flushed to disk, renamed, and the folder is synced: a reader sees the old file or the whole new one.
Remote paths (s3://, gs://, ...) keep Lightning's own write.
"""

from __future__ import annotations

from typing import Any, Optional

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem

from lit_llm.checkpoint import torch_save_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are temporary file + fsync + rename in the target folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        torch_save_atomic(checkpoint, path)
