"""Helpers shared by the tests (and by benchmarks/serve_load.py); no tests here, and no part of the library.

- ``paths``: the repository root, the shared data sets, and a subprocess environment for the CLI (``cli_env``);
- ``checkpoints``: a random-weight language-model checkpoint in the format ``fit`` writes (``write_lm_checkpoint``);
- ``cli``: ``python -m lit_llm`` in this process (``call``, ``error_line``) or in a subprocess (``run_cli``);
- ``training``: a few classifier steps on SST-2 (``tiny_fit``);
- ``server_process``: ``python -m lit_llm serve`` in a subprocess on a free port (``ServerProcess``);
- ``wandb_offline``: a reader of offline W&B run files;
- ``nan_injection``: a callback that poisons one gradient (``--trainer.callbacks+=tests.helpers.nan_injection.PoisonOneRank``).
"""
