"""Lightning's ModelParallelStrategy with a pipeline degree, and degrees that resolve against each other."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, Optional, Union

from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.constants import default_pg_timeout

from lit_llm.parallel.dims import ParallelDims


class ModelParallel(ModelParallelStrategy):
    """``ModelParallelStrategy`` (FSDP2 x tensor parallel) plus pipeline parallelism and data-parallel replicas
    (HSDP), on one device mesh.

    ``"auto"`` for the data- or tensor-parallel degree means "what the other degrees leave":
    ``data_parallel_size = world_size / (tensor_parallel_size * pipeline_parallel_size)``. (Lightning's own
    ``"auto"`` means one data-parallel group per node.) Degrees that do not multiply to the number of
    processes are refused with an error that says how to fix them. The device mesh is the one
    ``ParallelDims.build_mesh`` makes for every layout: dimensions ("pipeline_parallel",
    "data_parallel_replicate", "data_parallel_shard", "tensor_parallel"), size-1 ones included, with the two
    data-parallel ones flattened into "data_parallel" for the data sampler and Lightning. With
    ``pipeline_parallel_size > 1`` the LightningModule runs the pipeline schedule (see
    ``lit_llm.parallel.pipeline``); with ``data_parallel_replicate_size > 1`` FSDP2 shards within each replica
    and all-reduces the gradients across replicas (HSDP), which keeps the sharding traffic inside a node or a
    rack.

    Args:
        data_parallel_size: FSDP2 degree (within a replica), or ``auto``.
        tensor_parallel_size: tensor(+sequence)-parallel degree, or ``auto`` (all processes of a node when
            both are ``auto``).
        pipeline_parallel_size: number of pipeline stages.
        data_parallel_replicate_size: data-parallel replicas, each sharded ``data_parallel_size`` ways (HSDP).
        save_distributed_checkpoint: save sharded checkpoint folders (``consolidate`` merges them).
        process_group_backend: ``nccl``, ``gloo``... (default: chosen by device).
        timeout: collective timeout.
    """

    def __init__(
        self,
        data_parallel_size: Union[Literal["auto"], int] = "auto",
        tensor_parallel_size: Union[Literal["auto"], int] = "auto",
        pipeline_parallel_size: int = 1,
        data_parallel_replicate_size: int = 1,
        save_distributed_checkpoint: bool = True,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta] = default_pg_timeout,
    ) -> None:
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint,
                         process_group_backend, timeout)
        self._pipeline_parallel_size = pipeline_parallel_size
        self._replicate_size = data_parallel_replicate_size

    def setup_environment(self) -> None:
        world = self.num_nodes * self.num_processes
        dp, tp, pp = self._data_parallel_size, self._tensor_parallel_size, self._pipeline_parallel_size
        rep = self._replicate_size
        if dp == "auto" and tp == "auto":
            tp = self.num_processes if pp == 1 and rep == 1 else 1  # TP within a node, DP across nodes
        if dp == "auto":
            dp = world / (tp * pp * rep)
        if tp == "auto":
            tp = world / (dp * pp * rep)
        if not float(dp).is_integer() or not float(tp).is_integer():
            raise ValueError(
                f"data_parallel_size={self._data_parallel_size}, tensor_parallel_size={self._tensor_parallel_size},"
                f" pipeline_parallel_size={pp} and data_parallel_replicate_size={rep} do not divide the {world}"
                " processes; pick degrees whose product is --trainer.devices x --trainer.num_nodes"
            )
        dims = ParallelDims(world_size=world, dp_replicate=rep, dp_shard=int(dp), tp=int(tp), pp=pp)  # or raises
        # Lightning builds a (data, tensor) mesh; pipeline stages and replicas ride along the data dimension
        # until the mesh below replaces it
        self._data_parallel_size, self._tensor_parallel_size = dims.dp * dims.pp, dims.tp
        super().setup_environment()
        self._data_parallel_size = dims.dp
        mesh = dims.build_mesh(self.root_device.type)  # the one mesh builder, with a pipeline dimension and HSDP
        self._device_mesh = mesh
        self.lightning_module._device_mesh = mesh
