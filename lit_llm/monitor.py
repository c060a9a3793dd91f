"""``python -m lit_llm monitor FEEDBACK.jsonl``: what users said of the served model, from the feedback store that
``serve``'s ``POST /v1/feedback`` writes: a report with pictures, a JSON summary, and one line for a cron job.

The report covers the last ``--window_hours`` (24) before ``--until`` (now), against the window before it:

- **ratings and corrections over time** (``feedback_over_time.png``): per period, the share of records that carry a
  correction (``corrected_text`` or ``corrected_label``) and the share of ratings that are bad (-1), over the
  store's whole history, above the number of records;
- **the classifier's label mix** (``label_mix.png``): the labels the served model gave, as clients sent them back
  in the feedback's ``response``, the labels users corrected them to, and, with ``--train_labels``, the training
  data's mix; the drift is the total variation distance between the served mix and the training mix (0: the same
  mix, 1: no label in common). The store holds the requests users commented on, not all the traffic: the served
  mix is the mix of those requests, and the drift says how far the commented-on traffic is from the training
  data, not the whole traffic (``GET /metrics`` counts that);
- **the most frequent corrections** (``top_corrections.png``): a classifier's ``response -> corrected_label``
  pairs and a language model's corrected texts.

It prints one line (``feedback: 812 records in the last 24h (5,210 in all), 31% corrected (up from 22%), ...;
ALERT: correction rate 31% > 30%``) and exits 1 when a threshold (``--max_correction_rate``, ``--max_bad_rate``,
``--max_label_drift``, ``--min_records``) is crossed, 0 otherwise: a cron job alerts on the exit code.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from lit_llm.errors import UsageError

# the period of the over-time figure, in hours: the shortest that draws the store's span in at most MAX_PERIODS
PERIOD_HOURS = (1, 6, 24, 24 * 7, 24 * 30)
MAX_PERIODS = 60
SHOWN_CHARS = 60  # a corrected text is shown (and counted) by its first characters


@dataclass
class Window:
    """What users said in one window of time."""

    start: str  # ISO 8601, UTC
    end: str
    records: int = 0
    corrected: int = 0  # records that carry a corrected_text or a corrected_label
    rated: int = 0
    bad: int = 0  # ratings of -1

    @property
    def correction_rate(self) -> Optional[float]:
        return self.corrected / self.records if self.records else None

    @property
    def bad_rate(self) -> Optional[float]:
        return self.bad / self.rated if self.rated else None

    def add(self, record: dict[str, Any]) -> None:
        self.records += 1
        self.corrected += is_correction(record)
        if record.get("rating") in (1, -1):
            self.rated += 1
            self.bad += record["rating"] == -1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "correction_rate": self.correction_rate, "bad_rate": self.bad_rate}


@dataclass
class FeedbackReport:
    """The numbers of a report (``summary.json``) and the alerts they raised."""

    stores: list[str]
    until: str
    window_hours: float
    records: int  # in the stores, whatever their time
    skipped_lines: int  # lines that were not whole records (torn by a crash)
    window: Window  # the last window_hours
    previous: Window  # the window_hours before it
    by_kind: dict[str, int]  # records of the window by kind
    period_hours: float  # of ``periods``
    periods: list[Window]  # the store's whole span, for the over-time figure
    label_counts: dict[str, dict[str, int]]  # "served", "corrected", "training" -> label -> count (the window's)
    label_drift: Optional[float]  # total variation distance, served mix vs training mix
    top_corrections: list[tuple[str, int]]  # the window's most frequent corrections
    notes: list[str] = field(default_factory=list)  # what the report could not show, and why
    alerts: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["window"], out["previous"] = self.window.to_dict(), self.previous.to_dict()
        out["periods"] = [p.to_dict() for p in self.periods]
        out["top_corrections"] = [{"correction": c, "count": n} for c, n in self.top_corrections]
        return out


@dataclass(frozen=True)
class Thresholds:
    """When ``monitor`` raises an alert (None: never)."""

    max_correction_rate: Optional[float] = None
    max_bad_rate: Optional[float] = None
    max_label_drift: Optional[float] = None
    min_records: Optional[int] = None


def is_correction(record: dict[str, Any]) -> bool:
    return record.get("corrected_text") is not None or record.get("corrected_label") is not None


def record_time(record: dict[str, Any]) -> Optional[datetime]:
    """When the server stored the record (its ``time``, UTC), or None if it has no readable time."""
    try:
        t = datetime.fromisoformat(str(record["time"]))
    except (KeyError, ValueError):
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _label(value: Any, names: Optional[list[str]]) -> Optional[str]:
    """A label as the report names it: a class name, or the id as text without the names (None: no label). A served
    ``response`` may be the label, its id, or the JSON of a /v1/classify result (``{"label": ...}``)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "label" in parsed:
                return _label(parsed["label"], names)
        if names and text.lstrip("-").isdigit() and text not in names:
            value = int(text)
        else:
            return text or None
    if isinstance(value, int):
        return names[value] if names and 0 <= value < len(names) else str(value)
    return str(value)


def _correction(record: dict[str, Any], names: Optional[list[str]]) -> Optional[str]:
    """How the correction of ``record`` is counted among the most frequent: ``served -> corrected`` for a label, the
    first ``SHOWN_CHARS`` characters of a corrected text."""
    if record.get("corrected_label") is not None:
        served = _label(record.get("response"), names) or "?"
        return f"{served} -> {_label(record['corrected_label'], names)}"
    if record.get("corrected_text") is not None:
        text = " ".join(str(record["corrected_text"]).split())
        return text[:SHOWN_CHARS] + ("…" if len(text) > SHOWN_CHARS else "")
    return None


def label_drift(served: dict[str, int], training: dict[str, int]) -> Optional[float]:
    """Total variation distance between two label mixes (counts): half the sum of the shares' differences, 0..1."""
    n_served, n_training = sum(served.values()), sum(training.values())
    if not n_served or not n_training:
        return None
    labels = set(served) | set(training)
    return 0.5 * sum(abs(served.get(k, 0) / n_served - training.get(k, 0) / n_training) for k in labels)


def _period_hours(span: timedelta) -> float:
    hours = span.total_seconds() / 3600
    return next((p for p in PERIOD_HOURS if hours / p <= MAX_PERIODS), PERIOD_HOURS[-1])


def summarize(records: Iterable[dict[str, Any]], until: datetime, window_hours: float = 24.0,
              label_names: Optional[list[str]] = None, training_labels: Optional[dict[str, int]] = None,
              top: int = 10, stores: Optional[list[str]] = None, skipped_lines: int = 0) -> FeedbackReport:
    """The report's numbers from feedback records (``FeedbackStore.records()``), as of ``until`` (UTC)."""
    window_start = until - timedelta(hours=window_hours)
    previous_start = window_start - timedelta(hours=window_hours)
    window = Window(window_start.isoformat(), until.isoformat())
    previous = Window(previous_start.isoformat(), window_start.isoformat())
    by_kind: Counter = Counter()
    served, corrected = Counter(), Counter()
    corrections: Counter = Counter()
    timed: list[tuple[datetime, dict[str, Any]]] = []
    total = untimed = 0
    for record in records:
        total += 1
        t = record_time(record)
        if t is None:
            untimed += 1
            continue
        if t <= until:
            timed.append((t, record))
        if previous_start < t <= window_start:
            previous.add(record)
        if not window_start < t <= until:
            continue
        window.add(record)
        by_kind[record.get("kind", "?")] += 1
        if record.get("kind") == "classification":
            label = _label(record.get("response"), label_names)
            if label is not None:
                served[label] += 1
            if record.get("corrected_label") is not None:
                corrected[_label(record["corrected_label"], label_names)] += 1
        c = _correction(record, label_names)
        if c is not None:
            corrections[c] += 1
    notes = []
    if untimed:
        notes.append(f"{untimed} record(s) without a readable time are left out of the windows")
    if skipped_lines:
        notes.append(f"{skipped_lines} line(s) of the store were not whole records (torn by a crash) and were skipped")
    period = _period_hours(until - min((t for t, _ in timed), default=until))
    periods = _periods(timed, until, period)
    counts = {"served": dict(served.most_common()), "corrected": dict(corrected.most_common())}
    drift = None
    if training_labels is not None:
        counts["training"] = dict(sorted(training_labels.items(), key=lambda kv: -kv[1]))
        drift = label_drift(served, training_labels)
        unknown = sorted(set(served) - set(training_labels))
        if unknown:
            notes.append(f"served labels {unknown} are not among the training labels {sorted(training_labels)}: give"
                         " --checkpoint (the class names) or check that the responses sent back are labels")
    if by_kind.get("classification") and not served:
        notes.append("no classification record of the window carries the served label in 'response': the served mix"
                     " and the drift need clients to send the label they were given back with their feedback")
    return FeedbackReport(stores=list(stores or []), until=until.isoformat(), window_hours=window_hours, records=total,
                          skipped_lines=skipped_lines, window=window, previous=previous, by_kind=dict(by_kind),
                          period_hours=period, periods=periods, label_counts=counts, label_drift=drift,
                          top_corrections=corrections.most_common(top), notes=notes)


def _periods(timed: list[tuple[datetime, dict[str, Any]]], until: datetime, hours: float) -> list[Window]:
    """One window per ``hours`` from the first record to ``until`` (the last one ends at ``until``)."""
    if not timed:
        return []
    first = min(t for t, _ in timed)
    n = max(1, math.ceil((until - first).total_seconds() / (hours * 3600)))
    step = timedelta(hours=hours)
    periods = [Window((until - (n - i) * step).isoformat(), (until - (n - i - 1) * step).isoformat()) for i in range(n)]
    for t, record in timed:
        periods[max(0, n - 1 - int((until - t) / step))].add(record)
    return periods


def check(report: FeedbackReport, thresholds: Thresholds) -> list[str]:
    """The alerts the report raises: one short phrase per threshold crossed."""
    alerts, w = [], report.window
    if thresholds.min_records is not None and w.records < thresholds.min_records:
        alerts.append(f"{w.records} records < {thresholds.min_records}")
    if thresholds.max_correction_rate is not None and w.correction_rate is not None \
            and w.correction_rate > thresholds.max_correction_rate:
        alerts.append(f"correction rate {_pct(w.correction_rate)} > {_pct(thresholds.max_correction_rate)}")
    if thresholds.max_bad_rate is not None and w.bad_rate is not None and w.bad_rate > thresholds.max_bad_rate:
        alerts.append(f"bad ratings {_pct(w.bad_rate)} > {_pct(thresholds.max_bad_rate)}")
    if thresholds.max_label_drift is not None and report.label_drift is not None \
            and report.label_drift > thresholds.max_label_drift:
        alerts.append(f"label drift {report.label_drift:.2f} > {thresholds.max_label_drift:g}")
    return alerts


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _change(now: Optional[float], before: Optional[float]) -> str:
    if now is None or before is None:
        return ""
    a, b = round(100 * now), round(100 * before)
    return f" ({'up from' if a > b else 'down from'} {_pct(before)})" if a != b else " (as before)"


def summary_line(report: FeedbackReport, out: Optional[Path] = None) -> str:
    """The report in one line: the window's records, correction rate and bad ratings against the window before,
    the drift, then ``OK`` or ``ALERT: ...``, and where the report is."""
    w, p = report.window, report.previous
    parts = [f"feedback: {w.records:,} records in the last {report.window_hours:g}h ({report.records:,} in all)"]
    if w.records:
        parts.append(f"{_pct(w.correction_rate)} corrected{_change(w.correction_rate, p.correction_rate)}")
    if w.rated:
        parts.append(f"{_pct(w.bad_rate)} of {w.rated:,} ratings bad{_change(w.bad_rate, p.bad_rate)}")
    if report.label_drift is not None:
        parts.append(f"label drift {report.label_drift:.2f} vs training")
    line = ", ".join(parts) + ("; ALERT: " + "; ".join(report.alerts) if report.alerts else "; OK")
    return line + (f"; report: {out}" if out is not None else "")


def training_mix(path: str, label_names: Optional[list[str]]) -> dict[str, int]:
    """Label -> count of a labelled file (``lit_llm.data.labelled.read_labelled``), named as the report names them."""
    from lit_llm.data.labelled import read_labelled  # brings Lightning: only when a training file is given

    _, ids = read_labelled(path, label_names=label_names, num_classes=len(label_names) if label_names else 1 << 30)
    return dict(Counter(_label(i, label_names) for i in ids))


def feedback_report(stores: list[str], window_hours: float = 24.0, until: Optional[str] = None,
                    train_labels: Optional[str] = None, label_names: Optional[list[str]] = None,
                    top: int = 10) -> FeedbackReport:
    """Read the stores and summarize them (no figures, no alerts): ``monitor``'s numbers, for Python callers."""
    from lit_llm.feedback import FeedbackStore

    if not stores:
        raise UsageError("Give the feedback store: monitor feedback.jsonl (several: monitor a.jsonl b.jsonl)")
    if not window_hours > 0:
        raise UsageError(f"--window_hours must be > 0, got {window_hours}")
    if until is None:
        end = datetime.now(timezone.utc)
    else:
        try:
            end = datetime.fromisoformat(until)
        except ValueError:
            raise UsageError(f"--until {until!r} is not an ISO 8601 time, e.g. 2026-05-01T12:00:00+00:00") from None
        end = end.replace(tzinfo=timezone.utc) if end.tzinfo is None else end.astimezone(timezone.utc)
    training = training_mix(train_labels, label_names) if train_labels else None
    records, skipped = [], 0
    for path in stores:
        store = FeedbackStore(path)
        records += list(store.records())  # FileNotFoundError names a missing store
        skipped += len(store.skipped)
    return summarize(records, end, window_hours, label_names, training, top, stores=list(stores), skipped_lines=skipped)


def monitor(stores: list[str], out: Optional[str] = None, window_hours: float = 24.0, until: Optional[str] = None,
            train_labels: Optional[str] = None, checkpoint: Optional[str] = None,
            label_names: Optional[list[str]] = None, max_correction_rate: Optional[float] = None,
            max_bad_rate: Optional[float] = None, max_label_drift: Optional[float] = None,
            min_records: Optional[int] = None, top: int = 10, figures: bool = True) -> FeedbackReport:
    """Report on a feedback store: ratings, corrections, label drift; PNGs, summary.json and one line (exit 1: alert).

    What ``serve``'s /v1/feedback collected: ratings and corrections over time, the classifier's label mix against
    its training data (drift), the most frequent corrections. The line printed ends in OK or ALERT, and the exit
    code is 1 when a threshold is crossed, for a cron job to alert on.

    Args:
        stores: the feedback store(s) (JSON lines written by ``serve --feedback_store``); several are read as one.
            On the command line: ``monitor feedback.jsonl``, or ``--stores feedback.jsonl``.
        out: folder for the figures and ``summary.json`` (default: ``STORE-report`` beside the first store).
        window_hours: the report's window: the last this many hours, compared with the same span before it.
        until: the end of the window, an ISO 8601 time (default: now); a time without a zone is UTC.
        train_labels: a labelled file of the classifier's training data (any format ``data.train`` takes: LABEL
            TEXT lines, CSV, JSON lines); its label mix is compared with the served one (the drift).
        checkpoint: the served classifier's checkpoint: its class names name the labels (ids in the training file
            or in the feedback become names).
        label_names: the class names in id order, when there is no checkpoint to read them from.
        max_correction_rate: alert when more than this share of the window's records carry a correction (0..1).
        max_bad_rate: alert when more than this share of the window's ratings are bad (-1) (0..1).
        max_label_drift: alert when the served label mix is further than this from the training mix (total variation
            distance, 0..1); needs --train_labels.
        min_records: alert when the window holds fewer records (the feedback stopped coming: a client or the
            server is broken).
        top: how many of the most frequent corrections to show.
        figures: draw the PNGs (false: summary.json and the line only).
    """
    for name, value in (("max_correction_rate", max_correction_rate), ("max_bad_rate", max_bad_rate),
                        ("max_label_drift", max_label_drift)):
        if value is not None and not 0 <= value <= 1:
            raise UsageError(f"--{name} is a share, 0..1 (0.3 for 30%), got {value}")
    if max_label_drift is not None and not train_labels:
        raise UsageError("--max_label_drift compares the served labels with the training data's: give --train_labels"
                         " FILE (the classifier's training file)")
    if top < 1:
        raise UsageError(f"--top must be >= 1, got {top}")
    if checkpoint is not None:
        from lit_llm.checkpoint import read_info

        info = read_info(checkpoint, purpose="monitor")
        if info.task != "classification":
            raise UsageError(f"{checkpoint} is a {info.task} checkpoint: --checkpoint names a classifier's classes")
        label_names = list(info.label_names) if info.label_names else [str(i) for i in range(info.num_classes or 0)]
    report = feedback_report(stores, window_hours, until, train_labels, label_names, top)
    report.alerts = check(report, Thresholds(max_correction_rate, max_bad_rate, max_label_drift, min_records))
    first = Path(stores[0])
    folder = Path(out) if out else first.with_name(f"{first.stem}-report")
    if figures:
        report.figures = [str(p) for p in draw(report, folder)]
    from lit_llm.io import write_text_atomic

    write_text_atomic(folder / "summary.json", json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    print(summary_line(report, folder), flush=True)
    if report.alerts:
        raise SystemExit(1)
    return report


def draw(report: FeedbackReport, folder: Path) -> list[Path]:
    """The report's figures as PNGs in ``folder`` (each written under a temporary name, then renamed): the ones
    there is something to draw for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lit_llm.curves import _save

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if report.periods:
        fig, (rates, counts) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
        starts = [datetime.fromisoformat(p.start) for p in report.periods]
        width = timedelta(hours=report.period_hours)
        for name, values in (("corrected (% of records)", [p.correction_rate for p in report.periods]),
                             ("bad (% of ratings)", [p.bad_rate for p in report.periods])):
            if any(v is not None for v in values):  # a period without any is a gap in the line (NaN)
                rates.plot([s + width / 2 for s in starts], [math.nan if v is None else 100 * v for v in values],
                           marker="o", label=name)
        rates.axvspan(datetime.fromisoformat(report.window.start), datetime.fromisoformat(report.until), alpha=0.08,
                      color="gray", label=f"last {report.window_hours:g}h")
        rates.set_ylabel("%")
        rates.set_ylim(-2, 102)
        rates.grid(True, alpha=0.3)
        rates.legend(fontsize=8)
        counts.bar(starts, [p.records for p in report.periods], width=width * 0.9, align="edge")
        counts.set_ylabel(f"records per {report.period_hours:g}h")
        counts.grid(True, alpha=0.3)
        fig.autofmt_xdate()
        written.append(_save(fig, folder / "feedback_over_time.png"))
        plt.close(fig)
    mixes = {k: v for k, v in report.label_counts.items() if v}
    if mixes:
        labels = sorted({label for mix in mixes.values() for label in mix})
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(mixes)
        for i, (name, mix) in enumerate(mixes.items()):
            n = sum(mix.values())
            title = {"served": "served (feedback's response)", "corrected": "corrected by users"}.get(name, name)
            ax.bar([x + i * width for x in range(len(labels))], [100 * mix.get(k, 0) / n for k in labels], width,
                   label=f"{title} (n={n:,})")
        ax.set_xticks([x + width * (len(mixes) - 1) / 2 for x in range(len(labels))], labels)
        ax.set_ylabel("% of the mix")
        if report.label_drift is not None:
            ax.set_title(f"label drift (served vs training): {report.label_drift:.2f}", fontsize=10)
        ax.grid(True, alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        written.append(_save(fig, folder / "label_mix.png"))
        plt.close(fig)
    if report.top_corrections:
        fig, ax = plt.subplots(figsize=(7, max(2.0, 0.35 * len(report.top_corrections) + 1)))
        names = [c for c, _ in report.top_corrections][::-1]
        ax.barh(range(len(names)), [n for _, n in report.top_corrections][::-1])
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel(f"times in the last {report.window_hours:g}h")
        ax.grid(True, alpha=0.3, axis="x")
        written.append(_save(fig, folder / "top_corrections.png"))
        plt.close(fig)
    return written
