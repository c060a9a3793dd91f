from lit_llm.callbacks.curves import PlotCurves
from lit_llm.callbacks.evaluation import EvaluationReport
from lit_llm.callbacks.finetuning import StagedFinetuning
from lit_llm.callbacks.log_lines import LogLines
from lit_llm.callbacks.lr_monitor import LRMonitor
from lit_llm.callbacks.nonfinite import NonFiniteGuard
from lit_llm.callbacks.preemption import Preemption
from lit_llm.callbacks.samples import SampleGenerations
from lit_llm.callbacks.throughput import TokenThroughput

__all__ = ["EvaluationReport", "LogLines", "LRMonitor", "NonFiniteGuard", "PlotCurves", "Preemption", "SampleGenerations", "StagedFinetuning", "TokenThroughput"]
