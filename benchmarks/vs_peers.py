"""Training-step time against litgpt, side by side: litgpt's own ``GPT`` (its ``Config`` set to the same shape)
and lit_llm's ``Decoder``, trained in the same loop on the same batches with the same optimizer (AdamW,
fused where the device has it), loss (cross-entropy) and precision (fp32 on CPU, bf16 autocast on GPU).

Two architectures per shape:
- ``llama``: RMSNorm, rotary positions, SwiGLU MLP, no biases, untied head, on both sides: the same
  computation, so the ratio is the implementation's.
- ``gpt2``: lit_llm's GPT-2 block (LayerNorm, GELU MLP, biases, learned positions, tied head) against
  litgpt's nearest (LayerNorm, GELU MLP, biases; litgpt has no learned positions, so rotary, and an untied
  head). Same matmul shapes, not the same computation.

Shapes: ``quickstart`` (4 layers, width 128, context 64, vocab 65, batch 16) and ``tiny`` (6 layers, width
384, context 256, vocab 8,192, batch 8), and on a GPU ``gpt2-124m`` (12 layers, width 768, context 1024,
vocab 50,304, batch 8). The two models are timed in alternating blocks of steps; the figure is the median
ms/step of each and the ratio lit_llm / litgpt (goal <= 1).

litgpt never enters lit_llm's environment: its requirements cap numpy, huggingface_hub and jsonargparse below what
lit_llm needs (pip falls back to litgpt 0.5.9, which downgrades numpy to 1.x and breaks pyarrow, and with it
``datasets``). So the script runs itself in a venv of its own, built on first use (about a minute) and reused
after: ``$LIT_LLM_CACHE_DIR/peers-venv`` (default ``~/.cache/lit_llm/peers-venv``), with torch pinned by the
repository's ``constraints.txt`` (the same torch as lit_llm's environment) and ``PEERS`` below. Both models are
timed in that one process, lit_llm's ``Decoder`` imported from this checkout's source, so the loop, batches and
torch are the same for both; it says so on stderr and in the JSON (``peers_venv``). Prints one JSON object.

    python benchmarks/vs_peers.py [--shapes quickstart tiny] [--steps 30] [--device cpu]
    python benchmarks/vs_peers.py --setup_only      # build (or check) the peers' venv and print its path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lit_llm.model import Decoder, ModelConfig  # noqa: E402

# the peers and their versions (litgpt 0.5.13 is the one docs/performance.md measured); torch comes from constraints.txt
PEERS = ["litgpt==0.5.13"]
IN_PEERS_VENV = "LIT_LLM_IN_PEERS_VENV"  # set when the script runs itself inside the peers' venv

SHAPES = {
    "quickstart": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, batch=16),
    "tiny": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, batch=8),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, batch=8),
}


def models(shape: dict, family: str):
    """(lit_llm Decoder, litgpt GPT) of the same shape and, for llama, the same architecture."""
    from litgpt.config import Config
    from litgpt.model import GPT

    n_layer, n_head, n_embd, block, vocab = (shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
    hidden = 4 * n_embd if family == "gpt2" else int(8 * n_embd / 3) // 64 * 64 or 64
    ours = Decoder(ModelConfig(family=family, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block,
                               vocab_size=vocab, intermediate_size=hidden, dropout=0.0))
    common = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block, vocab_size=vocab,
                  padded_vocab_size=vocab, n_query_groups=n_head, intermediate_size=hidden, rotary_percentage=1.0)
    if family == "llama":
        config = Config(**common, bias=False, norm_class_name="RMSNorm", norm_eps=1e-5, mlp_class_name="LLaMAMLP",
                        parallel_residual=False)
    else:
        config = Config(**common, bias=True, norm_class_name="LayerNorm", norm_eps=1e-5,
                        mlp_class_name="GptNeoxMLP", gelu_approximate="tanh", parallel_residual=False)
    return ours, GPT(config)


def step_times(model: torch.nn.Module, batches: list, device: str, steps: int) -> list[float]:
    fused = device == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    times = []
    for i, (x, y) in enumerate(batches[:steps]):
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def compare(name: str, family: str, device: str, steps: int, blocks: int) -> dict:
    shape = SHAPES[name]
    torch.manual_seed(0)
    ours, theirs = (m.to(device).train() for m in models(shape, family))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (steps, shape["batch"], shape["block_size"] + 1), generator=g)
    batches = [(b[:, :-1].to(device), b[:, 1:].to(device)) for b in ids]
    step_times(ours, batches, device, 3)  # warm-up: allocator, kernels
    step_times(theirs, batches, device, 3)
    mine, peer = [], []
    for b in range(blocks):  # alternating blocks of steps, the order swapped every block
        for model, out in ((ours, mine), (theirs, peer)) if b % 2 == 0 else ((theirs, peer), (ours, mine)):
            out.extend(step_times(model, batches, device, steps))
    ms_ours, ms_peer = 1000 * statistics.median(mine), 1000 * statistics.median(peer)
    tokens = shape["batch"] * shape["block_size"]
    return {"shape": name, "family": family, "params_lit_llm": n(ours), "params_litgpt": n(theirs),
            "lit_llm_ms": round(ms_ours, 2), "litgpt_ms": round(ms_peer, 2), "ratio": round(ms_ours / ms_peer, 3),
            "lit_llm_tokens_per_s": round(tokens / ms_ours * 1000), "litgpt_tokens_per_s": round(tokens / ms_peer * 1000)}


def peers_venv_dir() -> Path:
    cache = os.environ.get("LIT_LLM_CACHE_DIR") or Path.home() / ".cache" / "lit_llm"
    return Path(cache) / "peers-venv"


def _stamp() -> str:
    """What the peers' venv was built from: when it changes (another torch pin, other peers, another Python), the
    venv is built anew."""
    text = json.dumps({"python": sys.version, "constraints": (ROOT / "constraints.txt").read_text(), "peers": PEERS})
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_peers_venv() -> Path:
    """The peers' venv (``peers_venv_dir()``), built if missing or built from other pins; returns its python."""
    venv = peers_venv_dir()
    python, stamp = venv / "bin" / "python", venv / ".lit_llm_stamp"
    if python.exists() and stamp.exists() and stamp.read_text() == _stamp():
        return python
    print(f"vs_peers: building the peers' venv {venv} (torch from constraints.txt, {' '.join(PEERS)}); once, about a"
          " minute", file=sys.stderr, flush=True)
    if stamp.exists():
        stamp.unlink()
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([*pip, "torch"], check=True)
        subprocess.run([*pip, *PEERS], check=True)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"error: building the peers' venv {venv} failed ({' '.join(map(str, e.cmd))} exited with"
                         f" {e.returncode}); nothing of lit_llm's own environment was touched")
    stamp.write_text(_stamp())
    return python


def run_in_peers_venv(argv: list[str]) -> int:
    """Run this script again inside the peers' venv; lit_llm's environment never gets the peers."""
    python = ensure_peers_venv()
    print(f"vs_peers: running in the peers' venv {python.parents[1]} (litgpt is not installed in this environment,"
          " by design); both models are timed there, lit_llm's Decoder from this checkout", file=sys.stderr, flush=True)
    env = {**os.environ, IN_PEERS_VENV: str(python.parents[1])}
    return subprocess.run([str(python), str(Path(__file__).resolve()), *argv], env=env).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=None, choices=sorted(SHAPES))
    parser.add_argument("--families", nargs="+", default=["llama", "gpt2"], choices=["llama", "gpt2"])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--setup_only", action="store_true", help="build (or check) the peers' venv, print its path")
    args = parser.parse_args()
    if not os.environ.get(IN_PEERS_VENV):
        if args.setup_only:
            print(ensure_peers_venv().parents[1])
            return
        sys.exit(run_in_peers_venv(sys.argv[1:]))
    try:
        import litgpt  # noqa: F401
    except ImportError:
        raise SystemExit(f"error: litgpt is missing from the peers' venv {os.environ[IN_PEERS_VENV]}; delete that"
                         " folder and run this script again to rebuild it")
    shapes = args.shapes or (["gpt2-124m"] if args.device == "cuda" else ["quickstart", "tiny"])
    rows = []
    for name in shapes:
        for family in args.families:
            rows.append(compare(name, family, args.device, args.steps, args.blocks))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    from importlib.metadata import version

    print(json.dumps({"device": torch.cuda.get_device_name() if args.device == "cuda" else
                      f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
                      "torch": torch.__version__, "litgpt": version("litgpt"),
                      "peers_venv": os.environ[IN_PEERS_VENV], "rows": rows}))


if __name__ == "__main__":
    main()
