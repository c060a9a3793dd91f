from lit_llm.callbacks.lr_monitor import LRMonitor
from lit_llm.callbacks.throughput import TokenThroughput

__all__ = ["LRMonitor", "TokenThroughput"]
