from lit_llm.callbacks.throughput import TokenThroughput

__all__ = ["TokenThroughput"]
