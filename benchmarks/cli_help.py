"""What does each command's ``--help`` cost, against the imports it cannot avoid?

For every command of ``python -m lit_llm``, the wall time of ``python -m lit_llm COMMAND --help`` in a fresh
process, beside two baselines timed in the same rounds: a bare interpreter that imports ``lit_llm`` (what any
command pays) and one that imports ``lightning.pytorch`` (what ``fit``, ``validate``, ``test`` and ``predict`` pay,
since LightningCLI builds their help from Lightning's classes). Rounds alternate the commands and the baselines,
so a shared machine's drift hits them alike; each figure is the median over ``--rounds``. Reported per command:
seconds, and seconds over its baseline (Lightning's import for the LightningCLI commands, ``import lit_llm`` for the
others). Ends with one JSON line.

    python benchmarks/cli_help.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from lit_llm.cli import COMMANDS


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    runs = {"import lit_llm": [sys.executable, "-c", "import lit_llm"],
            "import lightning": [sys.executable, "-c", "import lightning.pytorch"]}
    runs.update({name: [sys.executable, "-m", "lit_llm", name, "--help"] for name in COMMANDS})
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, argv in runs.items():
            times[name].append(_seconds(argv))
    median = {name: statistics.median(t) for name, t in times.items()}
    commands = {}
    for name, command in COMMANDS.items():
        baseline = "import lit_llm" if command.target else "import lightning"
        commands[name] = {"s": round(median[name], 3), "baseline": baseline,
                          "over_baseline_s": round(median[name] - median[baseline], 3)}
        print(f"{name:>12} --help {median[name]:6.2f} s  ({commands[name]['over_baseline_s']:+.2f} s over {baseline})")
    print(json.dumps({"rounds": args.rounds, "import_lit_llm_s": round(median["import lit_llm"], 3),
                      "import_lightning_s": round(median["import lightning"], 3), "commands": commands,
                      "max_over_baseline_s": max(c["over_baseline_s"] for c in commands.values())}))


if __name__ == "__main__":
    main()
