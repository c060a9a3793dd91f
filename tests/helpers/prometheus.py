"""A ``GET /metrics`` page read back with ``prometheus_client``'s own parser, for the metrics tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a page in Prometheus's text format."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(page: dict, name: str, default: float = 0.0, **labels: str) -> float:
    """One sample of ``samples(text)``; ``default`` when the page does not have it (a counter never incremented)."""
    return page.get((name, tuple(sorted(labels.items()))), default)


def total(page: dict, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (e.g. every status of a route)."""
    return sum(v for (n, have), v in page.items() if n == name and set(labels.items()) <= set(have))
