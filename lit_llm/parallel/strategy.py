"""Lightning's ModelParallelStrategy with degrees that resolve against each other and are validated."""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy

from lit_llm.parallel.dims import ParallelDims


class ModelParallel(ModelParallelStrategy):
    """``ModelParallelStrategy`` (FSDP2 x tensor parallel on a 2D device mesh) where ``"auto"`` for one degree
    means "what the other leaves": ``data_parallel_size = world_size / tensor_parallel_size`` and vice versa.
    (Lightning's own ``"auto"`` means one data-parallel group per node.) Degrees that do not multiply to the
    number of processes are refused with an error that says how to fix them, before any process group work.
    """

    def setup_environment(self) -> None:
        world = self.num_nodes * self.num_processes
        dp, tp = self._data_parallel_size, self._tensor_parallel_size
        if dp == "auto" and tp == "auto":
            tp = self.num_processes  # tensor parallel within a node, data parallel across nodes
        if dp == "auto":
            dp = world // tp if world % tp == 0 else world / tp
        if tp == "auto":
            tp = world // dp if world % dp == 0 else world / dp
        if not float(dp).is_integer() or not float(tp).is_integer():
            raise ValueError(
                f"tensor_parallel_size={self._tensor_parallel_size} and data_parallel_size={self._data_parallel_size}"
                f" do not divide the {world} processes; pick degrees whose product is"
                " --trainer.devices x --trainer.num_nodes"
            )
        ParallelDims(world_size=world, dp_shard=int(dp), tp=int(tp))  # raises with the fix when the product is off
        self._data_parallel_size, self._tensor_parallel_size = int(dp), int(tp)
        super().setup_environment()
