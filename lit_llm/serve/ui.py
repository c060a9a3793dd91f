"""The web pages of ``serve --ui true`` (the ``ui`` extra): for a language model a chat page, for a classifier a
classify page, where users rate each answer and give a better one; and a dashboard for whoever runs the server.
Gradio, mounted at ``/ui`` on the server's own FastAPI app: one process and one port serve the API and the pages.

The pages are clients of the server's HTTP API, over loopback, never a second way into the model or the store:
answers come from ``/v1/chat/completions`` (streamed) or ``/v1/classify``, ratings and corrections go to
``/v1/feedback``, and the dashboard reads ``/metrics``. So the chat template, the limits, the stopping rules, the
validation, the rate limits and the store are exactly the API's, and a refusal is the API's own message, shown on
the page. Each call carries the user's address (``X-Forwarded-For``, which uvicorn trusts from 127.0.0.1), so
``--max_feedback_per_minute`` counts each user, not the page.

The API key, when the server has one, is asked for on the page (a password box), checked by the API, kept in the
session's server-side state and sent as ``Authorization: Bearer`` on every call; it is never written into the page,
a URL or a log. Without a valid key the page shows why and nothing else, and the dashboard reads the store only
after ``/metrics`` has accepted the key.

Text is shown as text: every message is HTML-escaped before the chat box renders it (the box renders HTML), and
labels, tables and status lines are components that show text. Nothing is loaded from outside the server (Gradio
serves its own scripts and styles; the theme uses the system's fonts), so the pages work offline.
"""

from __future__ import annotations

import html
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import gradio as gr
import httpx
from prometheus_client.parser import text_string_to_metric_families

from lit_llm.chat import answer_content
from lit_llm.feedback import FeedbackStore
from lit_llm.monitor import Window, summarize, summary_line, training_mix

PATH = "/ui"
WINDOW_HOURS = 24.0  # the dashboard's window, as monitor's default
TOP_CORRECTIONS = 10
REFRESH_S = 5.0  # the dashboard refreshes itself this often while it is shown
API_TIMEOUT = httpx.Timeout(120.0, connect=5.0)  # a stream may wait its turn in the queue (serve --timeout)
NO_FAVICON = '<link rel="icon" href="data:,">'  # the browser would ask the API's root for /favicon.ico (a 404)
THEME_FONTS = {"font": ["system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}  # nothing to fetch
OVER_TIME_HEADERS = ["period start (UTC)", "records", "corrected", "ratings bad"]
REQUEST_HEADERS = ["route", "requests", "4xx", "5xx", "mean latency (ms)", "p95 latency (ms)",
                   "mean first token (ms)", "p95 first token (ms)"]


class Refused(Exception):
    """The API did not do what the page asked: its message (or why it could not be reached), for the page."""


@dataclass(frozen=True, eq=False)  # its bound methods are Gradio's handlers: hashed by identity
class Pages:
    """What the pages need to know of the server: where its API is, the model it serves, whether it has an API
    key, the feedback store the dashboard reports on, and the training data's label mix (a classifier's)."""

    api_url: str  # http://127.0.0.1:PORT: the server itself, over loopback
    model: str
    task: str  # "completion" or "classification"
    needs_key: bool
    store: Path
    label_names: Optional[list[str]] = None
    training_labels: Optional[dict[str, int]] = None
    training_note: Optional[str] = None  # why there is no training mix

    # ------------------------------------------------------------------------------------------ the API
    def headers(self, key: Optional[str], request: Optional[gr.Request]) -> dict[str, str]:
        """The headers of a call on behalf of a page's user: the key, and the user's address (the rate limits)."""
        out = {"Authorization": f"Bearer {key}"} if key else {}
        client = getattr(request, "client", None)
        if client is not None and getattr(client, "host", None):
            out["X-Forwarded-For"] = client.host
        return out

    def client(self) -> httpx.AsyncClient:
        """A client of the API that ignores proxy variables (the API is on loopback)."""
        return httpx.AsyncClient(base_url=self.api_url, timeout=API_TIMEOUT, trust_env=False)

    async def post(self, path: str, body: dict[str, Any], key: Optional[str], request: Optional[gr.Request]) -> dict:
        """POST ``body`` to the API; its JSON answer, or ``Refused`` with its message."""
        try:
            async with self.client() as client:
                r = await client.post(path, json=body, headers=self.headers(key, request))
        except httpx.HTTPError as e:
            raise Refused(unreachable(e)) from None
        if r.status_code != 200:
            raise Refused(refusal(r.status_code, r.content))
        return r.json()

    async def feedback(self, record: dict[str, Any], conversation: Optional[str], key: Optional[str],
                       request: Optional[gr.Request]) -> str:
        """Store ``record`` through ``POST /v1/feedback`` with the model id and the conversation id; what to tell
        the user."""
        ids = {"model": self.model, **({"conversation_id": conversation} if conversation else {})}
        stored = await self.post("/v1/feedback", {**ids, **record}, key, request)
        return f"Thank you: stored as feedback {stored['id']}."

    # ------------------------------------------------------------------------------------------ sign-in
    async def sign_in(self, key: str, request: gr.Request) -> tuple:
        """Check ``key`` with the API (``GET /v1/models``); show the pages when it is accepted."""
        key = key.strip()
        if not key:
            return None, gr.update(), gr.update(), "Type the server's API key first.", ""
        try:
            async with self.client() as client:
                r = await client.get("/v1/models", headers=self.headers(key, request))
        except httpx.HTTPError as e:
            return None, gr.update(), gr.update(), unreachable(e), ""
        if r.status_code != 200:
            return None, gr.update(), gr.update(), refusal(r.status_code, r.content), ""
        return key, gr.update(visible=False), gr.update(visible=True), "", ""

    # ------------------------------------------------------------------------------------------ chat
    async def chat(self, message: str, turns: list[dict], conversation: Optional[str], key: Optional[str],
                   request: gr.Request) -> AsyncIterator[tuple]:
        """Send ``message`` with the conversation so far to ``/v1/chat/completions`` and stream the answer in.
        Outputs: the chat box, the turns, the conversation id, the message box and the status. A refusal leaves
        the conversation as it was and the message in its box, with the API's message in the status."""
        if not message.strip():
            yield shown(turns), turns, conversation, message, "Type a message first."
            return
        conversation = conversation or uuid.uuid4().hex
        history = [{"role": t["role"], "content": t["content"]} for t in turns]
        body = {"model": self.model, "messages": history + [{"role": "user", "content": message}], "stream": True}
        asked = shown(turns) + [{"role": "user", "content": as_text(message)}]
        yield asked, turns, conversation, "", ""
        served = ""
        try:
            async with self.client() as client:
                async with client.stream("POST", "/v1/chat/completions", json=body,
                                         headers=self.headers(key, request)) as r:
                    if r.status_code != 200:
                        raise Refused(refusal(r.status_code, await r.aread()))
                    async for text in deltas(r.aiter_lines()):
                        served += text
                        yield asked + [{"role": "assistant", "content": as_text(answer_content(served))}], turns, \
                            conversation, "", ""
        except httpx.HTTPError as e:
            yield shown(turns), turns, conversation, message, unreachable(e)
            return
        except Refused as e:
            yield shown(turns), turns, conversation, message, str(e)
            return
        turns = turns + [{"role": "user", "content": message},
                         {"role": "assistant", "content": answer_content(served), "served": served, "request": message}]
        yield shown(turns), turns, conversation, "", ""

    async def rate(self, liked: gr.LikeData, turns: list[dict], conversation: Optional[str], key: Optional[str],
                   request: gr.Request) -> tuple:
        """👍 stores the answer as good at once; 👎 opens the better-answer box, and nothing is stored until it is
        sent (one record: the rating and the better answer together). Outputs: the status, the box, the answer
        pending a better one."""
        index = liked.index if isinstance(liked.index, int) else -1
        if not 0 <= index < len(turns) or turns[index]["role"] != "assistant":
            return "", gr.update(visible=False), None
        if liked.liked is True:
            turn = turns[index]
            try:
                said = await self.feedback({"request": turn["request"], "response": turn["served"], "rating": 1},
                                           conversation, key, request)
            except Refused as e:
                said = str(e)
            return said, gr.update(visible=False), None
        if liked.liked is False:
            return ("👎 noted. Write a better answer below (or leave it empty) and press Send: nothing is stored until"
                    " you do."), gr.update(visible=True), index
        return "", gr.update(visible=False), None

    async def send_better(self, better: str, pending: Optional[int], turns: list[dict], conversation: Optional[str],
                          key: Optional[str], request: gr.Request) -> tuple:
        """Store the 👎 of the answer pending, with the better answer if one was written. Outputs: the status, the
        box, its text, the answer pending. A refusal keeps the box and its text, with the API's message."""
        if pending is None or not 0 <= pending < len(turns):
            return "Press 👎 under an answer first.", gr.update(visible=False), better, None
        turn = turns[pending]
        record = {"request": turn["request"], "response": turn["served"], "rating": -1}
        if better.strip():
            record["corrected_text"] = better
        try:
            said = await self.feedback(record, conversation, key, request)
        except Refused as e:
            return str(e), gr.update(visible=True), better, pending
        return said, gr.update(visible=False), "", None

    # ------------------------------------------------------------------------------------------ classify
    async def classify(self, text: str, conversation: Optional[str], key: Optional[str], request: gr.Request) -> tuple:
        """Classify ``text`` with ``/v1/classify``. Outputs: the label and probabilities, what was served (for the
        feedback), the conversation id, the feedback row, the status."""
        conversation = conversation or uuid.uuid4().hex
        try:
            answer = await self.post("/v1/classify", {"model": self.model, "input": text}, key, request)
        except Refused as e:
            return None, None, conversation, gr.update(visible=False), str(e)
        item = answer["data"][0]
        served = {"request": text, "response": json.dumps(item, ensure_ascii=False), "label": item["label"]}
        note = "The text was cut to the model's context to classify it." if item.get("truncated") else ""
        return item["probs"], served, conversation, gr.update(visible=True), note

    async def judge(self, served: Optional[dict], conversation: Optional[str], key: Optional[str],
                    request: gr.Request) -> tuple:
        """👍 on the label given: stored as good. Outputs: the status, the feedback row (hidden once stored)."""
        return await self._judged(served, {"rating": 1}, conversation, key, request)

    async def correct(self, label: Optional[str], served: Optional[dict], conversation: Optional[str],
                      key: Optional[str], request: gr.Request) -> tuple:
        """The right label of the text classified: stored as a bad rating with the corrected label. Outputs: the
        status, the feedback row (hidden once stored)."""
        if not label:
            return "Choose the right label first.", gr.update()
        if served and label == served["label"]:
            return f"'{label}' is the label the model gave: press 👍 instead.", gr.update()
        return await self._judged(served, {"rating": -1, "corrected_label": label}, conversation, key, request)

    async def _judged(self, served: Optional[dict], said: dict[str, Any], conversation: Optional[str],
                      key: Optional[str], request: gr.Request) -> tuple:
        """Store what the user ``said`` of the label served; the status and the feedback row."""
        if not served:
            return "Classify a text first.", gr.update(visible=False)
        try:
            return await self.feedback({"request": served["request"], "response": served["response"], **said},
                                       conversation, key, request), gr.update(visible=False)
        except Refused as e:
            return str(e), gr.update()

    # ------------------------------------------------------------------------------------------ dashboard
    def dashboard(self, key: Optional[str], request: gr.Request) -> tuple:
        """The server's metrics (``GET /metrics``, with the user's key) and ``monitor``'s report of the feedback
        store, as of now. The store is read only once the API has accepted the key. Outputs: the summary line,
        the requests table, the rates over time, the label mix, the top corrections, the status."""
        empty = ("", [], [], [], [])
        try:
            with httpx.Client(base_url=self.api_url, timeout=API_TIMEOUT, trust_env=False) as client:
                r = client.get("/metrics", headers=self.headers(key, request))
        except httpx.HTTPError as e:
            return (*empty, unreachable(e))
        if r.status_code != 200:
            return (*empty, refusal(r.status_code, r.content))
        store = FeedbackStore(self.store)
        try:
            records = list(store.records())
        except FileNotFoundError:
            records = []
        report = summarize(records, datetime.now(timezone.utc), WINDOW_HOURS, self.label_names,
                           self.training_labels, TOP_CORRECTIONS, stores=[str(self.store)],
                           skipped_lines=len(store.skipped))
        notes = report.notes + ([self.training_note] if self.training_note else [])
        mix = report.label_counts
        labels = sorted({label for counts in mix.values() for label in counts})
        label_rows = [[label, *(mix.get(k, {}).get(label, 0) for k in ("served", "corrected", "training"))]
                      for label in labels]
        top = [[correction, n] for correction, n in report.top_corrections]
        checked = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
        return (summary_line(report), request_rows(r.text), over_time(report.periods), label_rows, top,
                " ".join([f"Updated {checked}; refreshes every {REFRESH_S:g} s while shown.", *notes]))

    # ------------------------------------------------------------------------------------------ the page
    def blocks(self) -> gr.Blocks:
        """The page: the sign-in (when the server has a key), then the chat or classify tab and the dashboard."""
        with gr.Blocks(title=f"{self.model} · lit_llm", analytics_enabled=False) as page:
            key = gr.State(None)  # server-side, per session: never sent back to the browser
            conversation = gr.State(None)
            gr.Markdown(f"## {html.escape(self.model)}")
            with gr.Column(visible=self.needs_key, elem_id="sign-in") as sign_in:
                gr.Markdown("This server needs an API key. Type the key whoever runs it gave you; the page sends it"
                            " with each request and keeps it only for this session.")
                key_box = gr.Textbox(label="API key", type="password", elem_id="api-key")
                sign_in_button = gr.Button("Sign in", variant="primary", elem_id="sign-in-button")
                sign_in_status = gr.Textbox(label="Status", interactive=False, elem_id="sign-in-status")
            with gr.Column(visible=not self.needs_key, elem_id="pages") as pages:
                with gr.Tabs():
                    with gr.Tab("Chat" if self.task == "completion" else "Classify", elem_id="use-tab") as use_tab:
                        if self.task == "completion":
                            self._chat_tab(key, conversation)
                        else:
                            self._classify_tab(key, conversation)
                    with gr.Tab("Dashboard", elem_id="dashboard-tab") as dashboard_tab:
                        timer, shown_now = self._dashboard_tab(key)
            for event in (sign_in_button.click, key_box.submit):
                event(self.sign_in, key_box, [key, sign_in, pages, sign_in_status, key_box], api_visibility="private")
            dashboard_tab.select(lambda: gr.Timer(active=True), None, timer, api_visibility="private").then(
                self.dashboard, key, shown_now, api_visibility="private")
            use_tab.select(lambda: gr.Timer(active=False), None, timer, api_visibility="private")
        page.queue(default_concurrency_limit=None)  # the API's --max_queue bounds the work, not the page
        return page

    def _chat_tab(self, key: gr.State, conversation: gr.State) -> None:
        """The chat box, 👍 / 👎 on every answer (the box's like and dislike), the better-answer box."""
        turns = gr.State([])  # {role, content (as sent to the API)}, and for answers the text served and its request
        pending = gr.State(None)  # the answer whose 👎 waits for a better answer
        chatbot = gr.Chatbot(label=self.model, render_markdown=False, sanitize_html=True, allow_tags=False,
                             buttons=["copy", "copy_all"], elem_id="chatbot", height=360)
        message = gr.Textbox(label="Message", placeholder="Type a message and press Enter", elem_id="message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            new = gr.Button("New conversation", elem_id="new-conversation")
        with gr.Column(visible=False, elem_id="better-box") as better_box:
            better = gr.Textbox(label="A better answer (optional)", lines=3, elem_id="better")
            send_better = gr.Button("Send feedback", variant="primary", elem_id="send-better")
        status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        for event in (send.click, message.submit):
            event(self.chat, [message, turns, conversation, key], [chatbot, turns, conversation, message, status],
                  api_visibility="private")
        chatbot.like(self.rate, [turns, conversation, key], [status, better_box, pending], api_visibility="private")
        send_better.click(self.send_better, [better, pending, turns, conversation, key],
                          [status, better_box, better, pending], api_visibility="private")
        for event in (new.click, chatbot.clear):  # the box's own clear button starts over too
            event(lambda: ([], [], None, None, gr.update(visible=False), ""), None,
                  [chatbot, turns, conversation, pending, better_box, status], api_visibility="private")

    def _classify_tab(self, key: gr.State, conversation: gr.State) -> None:
        """The text box, the label and its probability, 👍 and the corrected label."""
        served = gr.State(None)  # the text classified and the answer as served
        text = gr.Textbox(label="Text", lines=3, placeholder="Type a text to classify", elem_id="text")
        classify = gr.Button("Classify", variant="primary", elem_id="classify")
        result = gr.Label(label="Label and probabilities", elem_id="result")
        with gr.Row(visible=False, elem_id="judge-row") as judge_row:
            right = gr.Button("👍 Right", elem_id="right")
            label = gr.Dropdown(choices=list(self.label_names or []), label="👎 The right label", elem_id="corrected-label")
            send_label = gr.Button("Send correction", elem_id="send-correction")
        status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        for event in (classify.click, text.submit):
            event(self.classify, [text, conversation, key], [result, served, conversation, judge_row, status],
                  api_visibility="private")
        right.click(self.judge, [served, conversation, key], [status, judge_row], api_visibility="private")
        send_label.click(self.correct, [label, served, conversation, key], [status, judge_row],
                         api_visibility="private")

    def _dashboard_tab(self, key: gr.State) -> tuple[gr.Timer, list]:
        """The dashboard's components; its timer (off until the tab is shown) and its outputs."""
        summary = gr.Textbox(label=f"Feedback, last {WINDOW_HOURS:g} h (lit_llm monitor)", interactive=False,
                             elem_id="summary")
        requests = gr.Dataframe(headers=REQUEST_HEADERS, label="Requests (GET /metrics, since the server started)",
                                interactive=False, elem_id="requests")
        rates = gr.Dataframe(headers=OVER_TIME_HEADERS, interactive=False, max_height=300, elem_id="over-time",
                             label="Ratings and corrections over time (newest first)")
        mix = gr.Dataframe(headers=["label", "served", "corrected to", "training"], interactive=False,
                           label=f"Label mix, last {WINDOW_HOURS:g} h (served: the answers users commented on)",
                           visible=self.task == "classification", elem_id="label-mix")
        top = gr.Dataframe(headers=["correction", "times"], interactive=False, elem_id="top-corrections",
                           label=f"Most frequent corrections, last {WINDOW_HOURS:g} h")
        status = gr.Textbox(label="Status", interactive=False, elem_id="dashboard-status")
        refresh = gr.Button("Refresh", elem_id="refresh")
        timer = gr.Timer(REFRESH_S, active=False)
        outputs = [summary, requests, rates, mix, top, status]
        for event in (timer.tick, refresh.click):
            event(self.dashboard, key, outputs, api_visibility="private", show_progress="hidden")
        return timer, outputs


# ---------------------------------------------------------------------------------------------- helpers
def as_text(text: str) -> str:
    """``text`` for the chat box, which renders HTML: escaped, so that it shows as typed and runs nothing."""
    return html.escape(text, quote=False).replace("\n", "<br>")


def shown(turns: list[dict]) -> list[dict[str, str]]:
    """The chat box's messages of the conversation's turns."""
    return [{"role": t["role"], "content": as_text(t["content"])} for t in turns]


async def deltas(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The text of a streamed chat completion's server-sent events, as it comes; an error event is ``Refused``."""
    async for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise Refused(f"The answer failed: {event['error'].get('message')}")
        for choice in event.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield text


def refusal(status: int, body: bytes) -> str:
    """The API's message of a refused request (OpenAI's ``{"error": {"message"}}``), for the page."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")[:300] or "no message"
    return f"The server refused it ({status}): {message}"


def unreachable(error: httpx.HTTPError) -> str:
    """What the page says when the API could not be reached (the server stopping, a timeout)."""
    return f"The server's API did not answer ({type(error).__name__}: {error}); try again, or check the server's log"


def over_time(periods: list[Window]) -> list[list]:
    """The report's periods, newest first: when each began, its records, and its shares of records corrected and
    of ratings bad (empty where it has none)."""
    def pct(x: Optional[float]) -> str:  # as monitor's summary line writes a share
        return "" if x is None else f"{100 * x:.0f}%"

    return [[datetime.fromisoformat(p.start).strftime("%Y-%m-%d %H:%M"), p.records, pct(p.correction_rate),
             pct(p.bad_rate)] for p in reversed(periods)]


def request_rows(text: str) -> list[list]:
    """One row per route of a ``GET /metrics`` page: requests, 4xx and 5xx answers, and the latency and time to
    first token (mean, and the upper bound of the bucket holding the 95th percentile), in milliseconds."""
    counts: dict[str, list[int]] = {}
    timings: dict[str, dict[str, dict]] = {}  # route -> metric -> {"sum", "count", "buckets": [(le, cumulative)]}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            route = s.labels.get("route")
            if route is None:
                continue
            if s.name == "lit_llm_http_requests_total":
                row = counts.setdefault(route, [0, 0, 0])
                status = int(s.labels["status"])
                row[0] += int(s.value)
                row[1] += int(s.value) if 400 <= status < 500 else 0
                row[2] += int(s.value) if status >= 500 else 0
            elif family.name in ("lit_llm_http_request_duration_seconds", "lit_llm_time_to_first_token_seconds"):
                h = timings.setdefault(route, {}).setdefault(family.name, {"sum": 0.0, "count": 0.0, "buckets": []})
                if s.name.endswith("_bucket"):
                    h["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_sum"):
                    h["sum"] = s.value
                elif s.name.endswith("_count"):
                    h["count"] = s.value

    def ms(route: str, name: str) -> list:
        h = timings.get(route, {}).get(name)
        if not h or not h["count"]:
            return ["", ""]
        p95 = next((le for le, cumulative in sorted(h["buckets"]) if cumulative >= 0.95 * h["count"]), float("inf"))
        return [round(1000 * h["sum"] / h["count"], 1), "> 120000" if p95 == float("inf") else round(1000 * p95, 1)]

    return [[route if route != "other" else "other (these pages, unknown paths)", *row,
             *ms(route, "lit_llm_http_request_duration_seconds"),
             *ms(route, "lit_llm_time_to_first_token_seconds")] for route, row in sorted(counts.items())]


def training_labels_of(checkpoint: str, label_names: Optional[list[str]]) -> tuple[Optional[dict[str, int]], str]:
    """The label mix of a classifier's training file, named in its checkpoint (the data module's ``train``), and
    a note saying why there is none when it cannot be read here."""
    from lit_llm.checkpoint import load

    _, ckpt = load(checkpoint, purpose="serve", mmap=True)
    train = (ckpt.get("datamodule_hyper_parameters") or {}).get("train")
    if not isinstance(train, str):
        return None, "No training mix: the checkpoint names no training file."
    try:
        return training_mix(train, label_names), ""
    except (OSError, ValueError) as e:
        return None, f"No training mix: the training file {train} could not be read here ({e})."


def mount_pages(app, pages: Pages) -> None:
    """Mount the pages at ``PATH`` on the server's FastAPI ``app``, before the server starts its front end."""
    theme = gr.themes.Default(**THEME_FONTS)
    gr.mount_gradio_app(app, pages.blocks(), path=PATH, theme=theme, footer_links=[], run_history=False,
                        show_error=False, mcp_server=False, head=NO_FAVICON)
