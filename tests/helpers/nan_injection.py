"""A callback for subprocess runs (``--trainer.callbacks+=tests.helpers.nan_injection.PoisonOneRank``, with the
repository root on the path): poison one gradient on one rank at one step, and report each rank's skipped-step count at the end."""

import lightning as L
import torch


class PoisonOneRank(L.Callback):
    def __init__(self, rank: int = 1, step: int = 3) -> None:
        self.rank, self.step = rank, step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # --trainer.callbacks run before the CLI's own NonFiniteGuard; the pipeline schedule runs backward itself,
        # so on_after_backward is not called there: poison here
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("nan")

    @staticmethod
    def _local(pl_module):  # this rank's shards: comparing DTensors would be a collective
        return [(p.to_local() if hasattr(p, "to_local") else p).detach().clone() for p in pl_module.parameters()]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._weights = self._local(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step - 1 == self.step:  # the step just taken
            unchanged = all(torch.equal(a, b) for a, b in zip(self._weights, self._local(pl_module)))
            print(f"rank {trainer.global_rank} step {self.step} unchanged={unchanged}", flush=True)

    def on_train_end(self, trainer, pl_module):
        guard = next(cb for cb in trainer.callbacks if type(cb).__name__ == "NonFiniteGuard")
        print(f"rank {trainer.global_rank} skipped={guard.skipped}", flush=True)
