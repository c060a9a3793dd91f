"""lm-evaluation-harness on a trained checkpoint, side by side: ``lit_llm evaluate``'s native adapter against lm-eval's
own ``--model hf`` on the checkpoint's Hugging Face export, in one run. Prints JSON: every metric both ways, the
largest difference, and the wall time of each (and their ratio).

The tasks are local (no network): a 4-way cloze and the rolling perplexity of whole speeches, from the last tenth
of Tiny Shakespeare (tests/helpers/lm_eval_tasks.py). The checkpoint must be a causal language model whose
tokenizer has an end-of-text token, e.g. the sentiment experiment's pretrained model:

    python -m lit_llm fit --config configs/experiment/pretrain.yaml     # runs/experiment/pretrain/checkpoints/last.ckpt
    python benchmarks/eval_parity.py --checkpoint runs/experiment/pretrain/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.lm_eval_tasks import MC_TASK, PPL_TASK, write_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a lit_llm causal language-model .ckpt")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    import torch
    import transformers
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lit_llm.evaluate import LitLLMEval
    from lit_llm.export import export

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tasks").mkdir()
        write_tasks(tmp / "tasks", tmp / "datasets")
        hf_dir = export(args.checkpoint, str(tmp / "hf"))
        manager = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)
        results, seconds = {}, {}
        for name, make in (("native", lambda: LitLLMEval(args.checkpoint, batch_size=args.batch_size)),
                           ("hf", lambda: HFLM(pretrained=str(hf_dir), device="cpu", batch_size=args.batch_size))):
            t0 = time.perf_counter()
            out = simple_evaluate(model=make(), tasks=[MC_TASK, PPL_TASK], log_samples=False, bootstrap_iters=0,
                                  task_manager=manager)
            seconds[name] = time.perf_counter() - t0  # model load and scoring; not the task index (shared)
            results[name] = {f"{task}/{metric.split(',')[0]}": value for task, row in out["results"].items()
                             for metric, value in row.items() if isinstance(value, float)}
    native, hf = results["native"], results["hf"]
    print(json.dumps({
        "checkpoint": args.checkpoint, "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
        "transformers": transformers.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "metrics": {k: {"native": native[k], "hf": hf[k]} for k in sorted(native)},
        "max_abs_diff": max(abs(native[k] - hf[k]) for k in native),
        "max_rel_diff": max(abs(native[k] - hf[k]) / max(abs(hf[k]), 1e-12) for k in native),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "native_over_hf_time": round(seconds["native"] / seconds["hf"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
