"""``lit_llm submit``'s job script without a cluster: values that go into it unquoted are checked first."""

import re

import pytest

from lit_llm.cli import main
from lit_llm.commands.submit import render_script
from tests.helpers.paths import REPO

DEBUG = str(REPO / "configs" / "debug.yaml")


@pytest.mark.parametrize("field,value,bad", [
    ("job_name", "train\n#SBATCH --uid=0", r"'\n' ' ' '#' '='"),  # a newline adds a line to the script
    ("partition", "gpu$(reboot)", "'$' '(' ')'"),  # a command substitution
    ("account", "acc`id`", "'`'"),
    ("time", "01:00:00;reboot", "';'"),
    ("output_dir", "logs $(id)", "' ' '$' '(' ')'"),
])
def test_unsafe_values_are_refused_naming_the_field_and_the_allowed_characters(tmp_path, capsys, field, value, bad):
    with pytest.raises(ValueError, match=f"--{field} .* has characters that are not allowed in a job script:"
                                         f" {re.escape(bad)}; use only letters, digits"):
        render_script(["--config", DEBUG], **{field: value})
    with pytest.raises(SystemExit) as exit_:  # the command: one error line, exit code 2, nothing written
        main(["submit", "--config", DEBUG, f"--{field}", value, "--script", str(tmp_path / "job.sbatch")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: --{field} ")
    assert not (tmp_path / "job.sbatch").exists()


def test_safe_values_are_written_as_given():
    text = render_script(["--config", DEBUG], job_name="sst2-ft_v1.2", time="1-00:00:00", partition="gpu,gpu-long",
                         account="proj_01", output_dir="/scratch/u1/runs+logs/slurm")
    for line in ("#SBATCH --job-name=sst2-ft_v1.2", "#SBATCH --time=1-00:00:00", "#SBATCH --partition=gpu,gpu-long",
                 "#SBATCH --account=proj_01", "#SBATCH --output=/scratch/u1/runs+logs/slurm/%x-%j.out"):
        assert line in text.splitlines()
    with pytest.raises(ValueError, match="--job_name '' is empty; use only"):
        render_script(["--config", DEBUG], job_name="")


@pytest.mark.parametrize("seconds", [-5, 0, 70000])
def test_a_signal_time_outside_sbatchs_range_is_refused(seconds, capsys):
    with pytest.raises(ValueError, match=f"--signal_seconds {seconds}: the warning signal must come 1 to 65535"):
        render_script(["--config", DEBUG], signal_seconds=seconds)
