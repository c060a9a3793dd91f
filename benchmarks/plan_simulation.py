"""Plans for Llama-2-70B and Llama-3-405B shapes at 64, 512 and 4,096 GPUs, checked at full scale on one CPU.

For each cluster, ``plan``'s layouts are listed (microbatch 1; Llama 2's 4M-token and Llama 3's 16M-token
global batches) and three of them are built rank by rank under torch's fake process group
(``lit_llm.parallel.simulate``): the fastest that fits, the fastest 3D one (pp, tp and dp all > 1) and
the fastest with the most pipeline stages. For each, the training state per GPU (fp32 weights, gradients
and AdamW moments, 16 bytes per parameter) as

- ``size`` estimates it (``fsdp_state_bytes_per_gpu``: the parameters spread evenly over all GPUs),
- ``plan`` estimates it (``costs.rank_parameters``: the largest rank's share of each weight, split over tp as
  ``apply_tp`` splits it and cut into dp padded shards as FSDP2 cuts it, on the largest pipeline stage), and
- the sharded tensors of the largest ranks hold it,

with the ratios. Prints one JSON object.

    python benchmarks/plan_simulation.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_llm.commands.plan import layouts  # noqa: E402
from lit_llm.model import ModelConfig  # noqa: E402
from lit_llm.model.costs import estimate, rank_parameters  # noqa: E402
from lit_llm.parallel.simulate import simulate_layout  # noqa: E402

CASES = {"llama-70b": dict(global_batch=1024, context=4096), "llama-405b": dict(global_batch=2048, context=8192)}
CLUSTERS = {64: (8, 8), 512: (64, 8), 4096: (512, 8)}  # GPUs: (nodes, GPUs per node)


def picks(rows: list[dict]) -> list[dict]:
    """The fastest fitting layout, the fastest 3D one and the fastest with the most stages (no repeats); of
    all layouts where none fits (405B on 64 GPUs: its 6.5 TB of state is over 80 GiB a GPU)."""
    fsdp = [r for r in rows if r["strategy"] == "fsdp" and r["fits"] != "no"] or [
        r for r in rows if r["strategy"] == "fsdp"]
    chosen = [fsdp[0]]
    chosen += [r for r in fsdp if r["pp"] > 1 and r["tp"] > 1 and r["dp"] > 1][:1]
    deepest = max(r["pp"] for r in fsdp)
    chosen += [r for r in fsdp if r["pp"] == deepest][:1]
    out = []
    for r in chosen:
        if r not in out:
            out.append(r)
    return out


def main() -> None:
    results = []
    for name, shape in CASES.items():
        cfg = ModelConfig.from_name(name)
        for gpus, (nodes, per_node) in CLUSTERS.items():
            rows = layouts(cfg, nodes, per_node, shape["global_batch"], 1, shape["context"])
            for r in picks(rows):
                t0 = time.perf_counter()
                sim = simulate_layout(cfg, r["pp"], r["dp"], r["tp"])
                size_bytes = estimate(cfg, world_size=gpus)["fsdp_state_bytes_per_gpu"]
                plan_bytes = r["state_gib"] * 2**30
                results.append({
                    "model": name, "parameters": cfg.num_parameters(), "gpus": gpus, "dp": r["dp"], "tp": r["tp"],
                    "pp": r["pp"], "fits": r["fits"], "rank_parameters": rank_parameters(cfg, r["pp"], r["tp"], r["dp"]),
                    "size_state_bytes": size_bytes, "plan_state_bytes": plan_bytes,
                    "simulated_state_bytes": sim["max_state_bytes"],
                    "simulated_over_plan": sim["max_state_bytes"] / plan_bytes,
                    "simulated_over_size": sim["max_state_bytes"] / size_bytes,
                    "ranks": sim["ranks"], "seconds": round(time.perf_counter() - t0, 2),
                })
                print(json.dumps({k: results[-1][k] for k in ("model", "gpus", "dp", "tp", "pp",
                                                               "simulated_over_plan", "simulated_over_size")}),
                      file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "bytes_per_parameter": 16, "results": results}, indent=1))


if __name__ == "__main__":
    main()
