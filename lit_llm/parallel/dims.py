"""Parallel degrees in one small validated object that builds the device mesh (torchtitan's ParallelDims)."""

from __future__ import annotations

from dataclasses import dataclass

from lit_llm.model.config import ModelConfig

# the device mesh's dimension names, in mesh order; DP is replicate x shard flattened (the sampler's, the metrics')
PP, DP_REPLICATE, DP_SHARD, TP = "pipeline_parallel", "data_parallel_replicate", "data_parallel_shard", "tensor_parallel"
DP = "data_parallel"


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of data (replicated and sharded), tensor and pipeline parallelism.

    ``dp_replicate * dp_shard * tp * pp`` must equal ``world_size``. Context parallelism (ring attention)
    would be one more degree here; torch's implementation has no CPU attention rule yet, so it is not offered.
    """

    world_size: int
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        for name in ("world_size", "dp_replicate", "dp_shard", "tp", "pp"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelDims.{name} must be >= 1, got {getattr(self, name)}")
        product = self.dp_replicate * self.dp_shard * self.tp * self.pp
        if product != self.world_size:
            raise ValueError(
                f"Parallel degrees dp_replicate={self.dp_replicate} x dp_shard={self.dp_shard} x tp={self.tp} x"
                f" pp={self.pp} = {product}, but the job has {self.world_size} processes; make the product equal"
                " --trainer.devices x --trainer.num_nodes"
            )

    @property
    def dp(self) -> int:
        """Total data-parallel degree: how many different batches one step sees."""
        return self.dp_replicate * self.dp_shard

    def check_model(self, config: ModelConfig) -> None:
        """Refuse a tensor-parallel degree the model's heads cannot be split by, before any work."""
        if self.tp > 1:
            for key in ("n_head", "n_kv_heads"):
                if getattr(config, key) % self.tp:
                    raise ValueError(
                        f"Tensor parallel degree {self.tp} does not divide {key}={getattr(config, key)};"
                        " choose a tp that divides both n_head and n_kv_heads"
                    )
            if config.intermediate_size % self.tp:
                raise ValueError(f"Tensor parallel degree {self.tp} does not divide intermediate_size={config.intermediate_size}")
        if self.pp > config.n_layer:
            raise ValueError(f"Pipeline degree {self.pp} is larger than n_layer={config.n_layer}")

    def build_mesh(self, device_type: str = "cpu"):
        """The one device mesh that training (``ModelParallel``) and the simulation (``plan --simulate``) use:
        dimensions (PP, DP_REPLICATE, DP_SHARD, TP), size-1 ones included, and DP, the two data-parallel
        dimensions flattened into one (torchtitan flattens them the same way)."""
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device_type, (self.pp, self.dp_replicate, self.dp_shard, self.tp),
                                mesh_dim_names=(PP, DP_REPLICATE, DP_SHARD, TP))
        mesh[DP_REPLICATE, DP_SHARD]._flatten(DP)
        return mesh

    @classmethod
    def of_mesh(cls, mesh) -> "ParallelDims":
        """The degrees of a mesh that ``build_mesh`` made, or of Lightning's own (DP, TP) mesh."""
        names = mesh.mesh_dim_names
        size = {n: mesh[n].size() for n in (PP, DP_REPLICATE, DP_SHARD, TP) if n in names}
        replicas = size.get(DP_REPLICATE, 1)
        return cls(world_size=mesh.size(), dp_replicate=replicas, tp=size.get(TP, 1), pp=size.get(PP, 1),
                   dp_shard=size.get(DP_SHARD, mesh[DP].size() // replicas if DP in names else 1))

    def fsdp_mesh(self, mesh):
        """What FSDP2 shards over: the shard dimension, or (replicate, shard) for HSDP."""
        if self.dp_replicate > 1:
            return mesh[DP_REPLICATE, DP_SHARD]
        return mesh[DP_SHARD] if DP_SHARD in mesh.mesh_dim_names else mesh[DP]
