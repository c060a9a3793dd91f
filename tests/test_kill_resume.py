"""Kill -9 anywhere: benchmarks/kill_resume.py SIGKILLs a CPU fit at random moments and reruns the same command
(--ckpt_path newest); the run that completes must have the uninterrupted run's weights, bit for bit. CI runs
a few kills; `python benchmarks/kill_resume.py --kills 20 [--devices 2]` runs more."""

import pytest

from benchmarks.kill_resume import kill_and_resume


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["mmap", "stream"])
def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path, small_corpus, stream):
    """The memory-mapped token files, and litdata's streaming loader (its position is in the checkpoint)."""
    if stream:
        pytest.importorskip("litdata", reason="the stream extra: pip install -e '.[stream]'")
    result = kill_and_resume(tmp_path, small_corpus, kills=3, devices=1, steps=60 if not stream else 30, seed=1,
                             stream=stream)
    assert result["kills"] == 3, result  # every rerun but the last is killed before its end
    assert result["bit_identical"] and result["survived"] == result["kills"], result
