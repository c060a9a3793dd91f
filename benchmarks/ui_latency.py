"""Time to first token of ``serve --ui true``'s chat page against the API's, side by side on one server.

1. API: ``POST /v1/chat/completions`` with ``stream: true`` (httpx, one keep-alive connection) with the body the
   chat page sends (``Pages.chat`` in lit_llm/serve/ui.py: the model, the one user message, ``stream``; so the
   server's default sampling and ``--max_tokens``), timed from the send to the first event whose text shows (the
   answer so far has a character that is not a space, as the page shows it; the first non-empty delta too).
2. Browser: the chat page at ``/ui/`` in headless Debian ``chromium`` (Playwright, not its own browser download),
   timed inside the page with ``performance.now()``: from the Enter keydown in the message box to the moment a
   MutationObserver sees the new answer's first text in ``#chatbot``; also when the user's own message appeared
   (the round trip through Gradio's queue with no model work in it) and the next animation frame after the text,
   and from resource timing when the page sent Gradio's ``queue/join``, had its answer, and had the event's
   ``queue/data`` stream open (null when the stream of an earlier event was still open).
3. Page load: a fresh browser context (empty cache) navigates to ``/ui/``; the ``performance.now()`` at which the
   message box (or the API-key box) is visible, and the navigation entry's DOMContentLoaded and load event ends.

``--repeats`` rounds after one warm-up of each path, the API and browser measurements alternating in order. The
model is ``--checkpoint`` (default: the experiment's pretrained model, runs/experiment/pretrain/checkpoints/last.ckpt
from ``python -m lit_llm fit --config configs/experiment/pretrain.yaml``, if it is there, else a random-weight
``debug`` model with a character tokenizer, as benchmarks/serve_load.py builds). Prints JSON: medians and p90 of
each, browser - API and browser / API, and the versions and machine for the record.

    python benchmarks/ui_latency.py --repeats 10
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from serve_load import percentile, write_checkpoint  # benchmarks/ is on the path when this script runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.server_process import ServerProcess  # noqa: E402  (the server-in-a-subprocess test harness)

PROMPT = "What light through yonder window breaks?"
DEFAULT_CKPT = Path("runs/experiment/pretrain/checkpoints/last.ckpt")
WAIT_MS = 60_000
PAUSE_MS = 500
ATTEMPTS = 5  # a sampled answer may end before it shows any text: try again, up to this many times

# Before the Enter: the keydown time, the user's message, the answer's first text and the next frame after it.
WATCH_CHAT = """() => {
  const lat = window.__lat = {t0: null, user: null, bot: null, frame: null};
  performance.clearResourceTimings();
  const q = role => document.querySelectorAll(`#chatbot [data-testid="${role}"]`);
  const users = q('user').length, bots = q('bot').length;
  window.addEventListener('keydown', e => { if (e.key === 'Enter') lat.t0 = performance.now(); },
                          {capture: true, once: true});
  const obs = new MutationObserver(() => {
    const t = performance.now(), found = q('bot');
    if (lat.user === null && q('user').length > users) lat.user = t;
    if (found.length > bots && found[found.length - 1].textContent.trim()) {
      lat.bot = t; obs.disconnect(); requestAnimationFrame(() => { lat.frame = performance.now(); });
    }
  });
  obs.observe(document.getElementById('chatbot'), {childList: true, subtree: true, characterData: true});
}"""
# From the start of every document: when the message box (or the API-key box) is first visible.
WATCH_LOAD = """(() => {
  const obs = new MutationObserver(() => {
    const box = document.querySelector('#message textarea, #api-key input');
    if (box && box.checkVisibility()) { window.__ready = performance.now(); obs.disconnect(); }
  });
  obs.observe(document, {childList: true, subtree: true, attributes: true});
})();"""
# After the answer: Gradio's requests of the event (resource timing: an entry is there once its request ended, the
# event's queue/data stream shortly after the answer), ms from the keydown.
REQUESTS = """async t0 => {
  const after = () => performance.getEntriesByType('resource').filter(e => e.startTime >= t0);
  const stream = () => after().find(e => e.name.includes('/queue/data'));
  for (let i = 0; i < 100 && !stream(); i++) await new Promise(done => setTimeout(done, 20));
  const join = after().find(e => e.name.includes('/queue/join')), data = stream();
  return {join_sent: join.startTime - t0, join_answered: join.responseEnd - t0,
          stream_opened: data ? data.responseStart - t0 : null}; }"""
NAVIGATION = """() => { const n = performance.getEntriesByType('navigation')[0];
  return {visible: window.__ready, dom_content_loaded: n.domContentLoadedEventEnd, load: n.loadEventEnd}; }"""


def api_ttft(client: httpx.Client, body: dict) -> dict | None:
    """ms to the first non-empty delta and to the first text that shows; None when the answer had none."""
    t0, first, text = time.perf_counter(), None, ""
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        lines = r.iter_lines()
        for line in lines:
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            delta = (event["choices"][0].get("delta") or {}).get("content") if event.get("choices") else None
            if delta:
                first = first or 1000 * (time.perf_counter() - t0)
                text += delta
                if text.strip():
                    shown = 1000 * (time.perf_counter() - t0)
                    for _ in lines:  # the rest of the answer: the server is idle before the next one
                        pass
                    return {"first_delta": first, "shown": shown}
    return None


def browser_ttft(page) -> dict | None:
    """In-page ms from the Enter keydown to the user's message and to the answer's first text; None without text."""
    page.click("#new-conversation")
    page.locator('#chatbot [data-testid="bot"]').wait_for(state="detached", timeout=WAIT_MS)
    page.wait_for_timeout(PAUSE_MS)  # a user's typing: that event's queue/data stream closes, as between messages
    page.fill("#message textarea", PROMPT)
    page.evaluate(WATCH_CHAT)
    page.press("#message textarea", "Enter")
    page.locator('#chatbot button[aria-label="Dislike"]').wait_for(timeout=WAIT_MS)  # the answer is done
    lat = page.evaluate("window.__lat")
    if lat["bot"] is None:
        return None
    page.wait_for_function("window.__lat.frame !== null", timeout=WAIT_MS)
    lat = page.evaluate("window.__lat")
    return {**{k: lat[k] - lat["t0"] for k in ("user", "bot", "frame")}, **page.evaluate(REQUESTS, lat["t0"])}


def page_load(browser, url: str) -> dict:
    """A first visit with an empty cache: in-page ms to the message box and the navigation's milestones."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script(WATCH_LOAD)
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function("window.__ready !== undefined", timeout=WAIT_MS)
        out = {**page.evaluate(NAVIGATION), "wall_from_playwright": 1000 * (time.perf_counter() - t0)}
    finally:
        context.close()
    return out


def retried(measure, *args) -> dict:
    for _ in range(ATTEMPTS):
        if (result := measure(*args)) is not None:
            return result
    raise RuntimeError(f"{ATTEMPTS} answers in a row showed no text: try another --checkpoint")


def stats(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median_ms": round(statistics.median(values), 2), "p90_ms": round(percentile(values, 0.9), 2),
            "all_ms": [round(v, 2) for v in values]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT if DEFAULT_CKPT.is_file() else None,
                   help=f"a causal language model (default: {DEFAULT_CKPT} if present, else a random debug model)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds, each one of every measurement")
    p.add_argument("--max_tokens", type=int, default=16, help="serve --max_tokens: the length of every answer")
    args = p.parse_args()
    try:
        import gradio
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        sys.exit(f"{e.name} is missing: pip install -e '.[serve,ui,dev]'")
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("no chromium on PATH: apt-get install chromium (Playwright's own browser download is not used)")

    env = {k: v for k, v in os.environ.items() if k != "LIT_LLM_API_KEY"}  # no key: the chat page shows at once
    runs: dict[str, list] = {"api": [], "browser": [], "load": []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint.resolve() if args.checkpoint else write_checkpoint(Path(tmp) / "lm.ckpt", "debug", 256)
        flags = ["--ui", "true", "--max_tokens", str(args.max_tokens), "--log_level", "warning",
                 "--feedback_store", str(Path(tmp) / "feedback.jsonl")]
        with ServerProcess(ckpt, flags, env=env, log=Path(tmp) / "server.log", cwd=tmp) as server, \
                httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client, \
                sync_playwright() as pw:
            model = client.get("/v1/models").json()["data"][0]["id"]
            body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True}  # the page's
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page()
            page.goto(f"{server.base_url}/ui/")
            page.locator("#message textarea").wait_for(timeout=WAIT_MS)
            retried(api_ttft, client, body), retried(browser_ttft, page)  # warm-up: connections, queue, stream
            page_load(browser, f"{server.base_url}/ui/")
            for i in range(args.repeats):
                paths = [("api", api_ttft, client, body), ("browser", browser_ttft, page)]
                for name, measure, *inputs in paths if i % 2 == 0 else paths[::-1]:
                    runs[name].append(retried(measure, *inputs))
                runs["load"].append(page_load(browser, f"{server.base_url}/ui/"))
            chromium_version = browser.version
            browser.close()

    api = [r["shown"] for r in runs["api"]]
    bot = [r["bot"] for r in runs["browser"]]
    print(json.dumps({
        "checkpoint": str(args.checkpoint or "random debug model"), "prompt": PROMPT, "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "api_ttft": stats(api), "api_first_delta": stats([r["first_delta"] for r in runs["api"]]),
        "browser_ttft": stats(bot),
        "browser_steps_from_keydown": {k: stats([r[k] for r in runs["browser"]]) for k in (
            "join_sent", "join_answered", "stream_opened", "user", "bot", "frame")},
        "browser_minus_api_ms": round(statistics.median(bot) - statistics.median(api), 2),
        "browser_minus_api_paired_median_ms": round(statistics.median(b - a for b, a in zip(bot, api)), 2),
        "browser_over_api": round(statistics.median(bot) / statistics.median(api), 3),
        "within_50_ms": statistics.median(bot) - statistics.median(api) <= 50,
        "page_load_cold_cache": {k: stats([r[k] for r in runs["load"]])
                                 for k in ("visible", "dom_content_loaded", "load", "wall_from_playwright")},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "gradio": gradio.__version__,
                     "playwright": importlib.metadata.version("playwright"),
                     "litserve": importlib.metadata.version("litserve"), "chromium": chromium_version},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }, indent=2))


if __name__ == "__main__":
    main()
