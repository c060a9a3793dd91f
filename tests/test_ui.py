"""The web pages of ``serve --ui true`` as their users see them: headless Chromium (Debian's ``chromium``), driven by
Playwright, against a real server in a subprocess on tiny checkpoints (a random-weight language model behind an API
key; a classifier trained a few steps, without a key). Every page runs with the network cut off but for the
server, and no request elsewhere may be needed; every page is watched for dialogs (a script that ran) and console
errors. The screenshots of docs/deployment.md and the README are written by

    LIT_LLM_SCREENSHOTS=docs/images \
    LIT_LLM_UI_CHECKPOINT=runs/experiment/feedback_round/seed0/instruct/checkpoints/last.ckpt \
    pytest tests/test_ui.py

which serves the sentiment experiment's instruction-tuned model (scripts/feedback_round.py) in place of the
random-weight one."""

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

pytest.importorskip("gradio", reason="the pages need the ui extra: pip install -e '.[serve,ui]'")
pytest.importorskip("playwright", reason="the browser tests need playwright: pip install -e '.[dev]'")

from playwright.sync_api import Page, expect  # noqa: E402

from lit_llm.chat import answer_content  # noqa: E402
from lit_llm.feedback import FeedbackStore  # noqa: E402
from tests.helpers import prometheus  # noqa: E402
from tests.helpers.checkpoints import write_lm_checkpoint  # noqa: E402
from tests.helpers.paths import cli_env  # noqa: E402
from tests.helpers.server_process import ServerProcess  # noqa: E402

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install chromium (CI's"
                                 " .ci/run installs it); Playwright's own browser download is not used")]

KEY = "ui-test-key"
XSS = "<img src=x onerror=alert(1)> and <script>alert(2)</script>"
CLASSES = ["negative", "<img src=x onerror=alert(3)>positive"]  # a label is an answer: one holds HTML
WAIT_MS = 30_000
SHOTS = os.environ.get("LIT_LLM_SCREENSHOTS")  # a folder: write the docs' screenshots there
TRAINED = os.environ.get("LIT_LLM_UI_CHECKPOINT")  # a trained language model to serve instead of random weights


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's browser, launched from Debian's chromium (Playwright's own download is not used)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory):
    """A language model's server with an API key and its pages; (server, its feedback store)."""
    tmp = tmp_path_factory.mktemp("ui_lm")
    ckpt = Path(TRAINED).resolve() if TRAINED else write_lm_checkpoint(tmp / "lm.ckpt")
    store = tmp / "feedback.jsonl"
    with ServerProcess(ckpt, ["--ui", "true", "--max_tokens", "8", "--feedback_store", str(store), "--model_name",
                              "lm"],
                       env={**cli_env(tmp), "LIT_LLM_API_KEY": KEY}, log=tmp / "server.log", cwd=tmp) as server:
        yield server, FeedbackStore(store)


@pytest.fixture(scope="module")
def classifier_server(tmp_path_factory):
    """A classifier's server without a key and its pages, trained two steps on SST-2 with the classes
    ``CLASSES``; (server, its feedback store)."""
    from lit_llm.tasks import SequenceClassifier
    from tests.helpers.training import tiny_fit

    tmp = tmp_path_factory.mktemp("ui_classifier")
    lm = write_lm_checkpoint(tmp / "lm.ckpt")
    tiny_fit(SequenceClassifier(init_from=str(lm), label_names=CLASSES), [], 2, tmp).save_checkpoint(tmp / "clf.ckpt")
    store = tmp / "feedback.jsonl"
    with ServerProcess(tmp / "clf.ckpt", ["--ui", "true", "--feedback_store", str(store)], env=cli_env(tmp),
                       log=tmp / "server.log", cwd=tmp) as server:
        yield server, FeedbackStore(store)


class Watch:
    """What a page did that it must not: requests that left the machine (aborted), dialogs, console errors."""

    def __init__(self) -> None:
        self.outside: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []

    def follow(self, page: Page) -> Page:
        def route(r) -> None:
            if urlsplit(r.request.url).hostname == "127.0.0.1":
                r.continue_()
            else:
                self.outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        return page

    def check(self) -> None:
        assert (self.outside, self.dialogs, self.errors) == ([], [], [])


@pytest.fixture
def watch() -> Watch:
    return Watch()


def open_pages(page: Page, watch: Watch, server: ServerProcess, key: str = KEY) -> Page:
    """The pages at /ui, watched, signed in with ``key`` when they ask for one."""
    watch.follow(page).goto(f"{server.base_url}/ui/")
    expect(page.locator("#api-key input, #text textarea").first).to_be_visible(timeout=WAIT_MS)
    if page.locator("#api-key input").is_visible():
        page.fill("#api-key input", key)
        page.click("#sign-in-button")
    return page


def chat(page: Page, text: str) -> str:
    """Send ``text``; the answer's text once it has streamed in (the answers get their 👍 / 👎 when done)."""
    answers = page.locator('#chatbot [data-testid="bot"]')
    before = answers.count()
    dislikes = page.locator('#chatbot button[aria-label="Dislike"]')
    rateable = dislikes.count()  # a rated answer's button has another label
    page.fill("#message textarea", text)
    page.press("#message textarea", "Enter")
    expect(dislikes).to_have_count(rateable + 1, timeout=WAIT_MS)
    return answers.nth(before).inner_text()


def opposite(answer: str) -> str:
    """The better answer a user gives a sentiment answer they dislike: the other label."""
    return "positive" if "negative" in answer else "negative"


def status(page: Page, pattern: str, box: str = "#status") -> str:
    expect(page.locator(f"{box} textarea")).to_have_value(re.compile(pattern), timeout=WAIT_MS)
    return page.locator(f"{box} textarea").input_value()


def table(page: Page, selector: str) -> list[list[str]]:
    """The rows of a table on the page (a Gradio Dataframe: a grid), as the texts of their cells."""
    rows = [[cell.strip() for cell in row.locator("[role=gridcell]").all_inner_texts()]
            for row in page.locator(f"{selector} [role=row]").all()]
    return [row for row in rows if row]  # the header row has no grid cells


def records(store: FeedbackStore) -> list[dict]:
    return list(store.records()) if store.path.exists() else []


def visible(text: str) -> str:
    """``text`` as the comparison of a page's and a store's text sees it: its printable characters, no spaces."""
    return "".join(c for c in text if c.isprintable() and not c.isspace() and c != "\ufffd")


def shoot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


# ---------------------------------------------------------------------------------------------- a language model
def test_without_the_key_the_page_says_why_and_serves_nothing_else(lm_server, page, watch):
    server, store = lm_server
    page = open_pages(page, watch, server, key="not-the-key")
    message = status(page, "401", box="#sign-in-status")
    assert "Invalid or missing API key" in message
    for hidden in ("#message", "#chatbot", "#dashboard-tab-button", "#summary"):
        assert not page.locator(hidden).is_visible()
    assert KEY not in page.content() and "not-the-key" not in page.content()
    page.fill("#api-key input", KEY)
    page.click("#sign-in-button")
    expect(page.locator("#message textarea")).to_be_visible(timeout=WAIT_MS)
    assert not page.locator("#api-key input").is_visible() and KEY not in page.content()
    watch.check()


def test_an_answer_streams_in_and_a_dislike_with_a_better_answer_is_one_whole_record(lm_server, page, watch):
    server, store = lm_server
    page = open_pages(page, watch, server)
    shown = chat(page, "a gripping , funny film")
    before = records(store)
    page.locator('#chatbot button[aria-label="Dislike"]').last.click()
    page.fill("#better textarea", opposite(shown))
    page.click("#send-better")
    status(page, "stored as feedback")
    new = records(store)[len(before):]
    assert len(new) == 1
    record = new[0]
    assert {k: record[k] for k in ("kind", "request", "rating", "corrected_text", "model")} == {
        "kind": "completion", "request": "a gripping , funny film", "rating": -1, "corrected_text": opposite(shown),
        "model": "lm"}
    assert visible(answer_content(record["response"])) == visible(shown)  # the answer as served, not as shown
    assert len(record["conversation_id"]) == 32
    expect(page.locator("#better")).to_be_hidden()
    shoot(page, "chat_page.png")
    watch.check()


def test_html_in_a_prompt_shows_as_text_runs_nothing_and_is_stored_as_typed(lm_server, page, watch):
    server, store = lm_server
    page = open_pages(page, watch, server)
    chat(page, XSS)
    expect(page.locator('#chatbot [data-testid="user"]').last).to_have_text(XSS)
    assert page.locator("#chatbot img[src='x'], #chatbot script").count() == 0
    before = len(records(store))
    page.locator('#chatbot button[aria-label="Like"]').last.click()
    status(page, "stored as feedback")
    (record,) = records(store)[before:]
    assert (record["request"], record["rating"]) == (XSS, 1)
    time.sleep(0.5)  # a script that ran would have opened its dialog by now
    watch.check()


def test_an_oversized_correction_shows_the_servers_message_and_stores_nothing(lm_server, page, watch):
    server, store = lm_server
    page = open_pages(page, watch, server)
    chat(page, "a dull film")
    before = store.path.read_bytes()
    page.locator('#chatbot button[aria-label="Dislike"]').last.click()
    page.fill("#better textarea", "x" * 70_000)
    page.click("#send-better")
    message = status(page, "refused")
    assert "(400)" in message and "'corrected_text' has 70,000 characters; the limit is 65,536" in message
    assert store.path.read_bytes() == before
    expect(page.locator("#better")).to_be_visible()  # the text stays, to be shortened and sent again
    watch.check()


def test_two_pages_posting_at_once_leave_two_whole_records(lm_server, page, watch):
    server, store = lm_server
    pages = [open_pages(page, watch, server), open_pages(page.context.new_page(), watch, server)]
    for i, p in enumerate(pages):
        chat(p, f"page {i}")
        p.locator('#chatbot button[aria-label="Dislike"]').last.click()
        p.fill("#better textarea", f"better {i} " + "y" * 30_000)
    before = len(records(store))
    for p in pages:  # both clicks are sent before either answer comes back
        p.locator("#send-better").dispatch_event("click")
    for p in pages:
        status(p, "stored as feedback")
    new = records(store)[before:]
    assert sorted(r["request"] for r in new) == ["page 0", "page 1"]
    for r in new:
        assert r["corrected_text"] == f"better {r['request'][-1]} " + "y" * 30_000
    assert len({r["conversation_id"] for r in new}) == 2
    assert store.skipped == []
    watch.check()


def test_the_dashboard_shows_the_counts_just_caused(lm_server, page, watch):
    server, store = lm_server
    page = open_pages(page, watch, server)
    chat(page, "one more")
    page.locator('#chatbot button[aria-label="Dislike"]').last.click()
    page.fill("#better textarea", XSS)  # shown on the dashboard, among the most frequent corrections
    page.click("#send-better")
    status(page, "stored as feedback")
    stored = records(store)
    n, corrected = len(stored), sum(r.get("corrected_text") is not None for r in stored)
    bad = sum(r.get("rating") == -1 for r in stored)
    page.get_by_role("tab", name="Dashboard").click()
    summary = status(page, "records in the last 24h", box="#summary")
    assert summary.startswith(f"feedback: {n} records in the last 24h ({n} in all), {100 * corrected / n:.0f}%"
                              f" corrected, {100 * bad / n:.0f}% of {n} ratings bad")
    assert table(page, "#over-time")[0][1:] == [str(n), f"{100 * corrected / n:.0f}%", f"{100 * bad / n:.0f}%"]
    scrape = prometheus.samples(httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text)
    rows = {cells[0]: cells[1:] for cells in table(page, "#requests")}
    for route in ("/v1/chat/completions", "/v1/feedback"):  # requests, 4xx, 5xx
        by_status = {dict(labels)["status"]: int(v) for (name, labels), v in scrape.items()
                     if name == "lit_llm_http_requests_total" and dict(labels)["route"] == route}
        assert rows[route][:3] == [str(sum(by_status.values())), *(str(sum(v for s, v in by_status.items()
                                                                            if s[0] == c)) for c in "45")]
    chats = prometheus.total(scrape, "lit_llm_http_requests_total", route="/v1/chat/completions")
    streamed = prometheus.value(scrape, "lit_llm_time_to_first_token_seconds_count", route="/v1/chat/completions")
    assert streamed == chats and rows["/v1/chat/completions"][5]  # the page streams every answer
    assert [XSS, "1"] in table(page, "#top-corrections")  # a correction holding HTML, shown as text
    shoot(page, "dashboard.png")
    watch.check()


def test_three_corrections_on_the_page_become_pairs_that_the_preference_config_fits_on(lm_server, page, watch,
                                                                                       tmp_path):
    """One round of the loop through the page: three answers corrected in the browser are three preference pairs
    (the correction chosen, the answer as served rejected), and `fit --config configs/experiment/preference.yaml`
    trains on the store's new lines."""
    import csv
    import math

    from lit_llm.feedback import preference_pairs
    from tests.helpers.cli import run_cli
    from tests.helpers.paths import REPO

    server, store = lm_server
    page = open_pages(page, watch, server)
    before = store.path.read_bytes() if store.path.exists() else b""
    for prompt in ["a gripping film", "a dull , tired film", "a warm , funny story"]:
        page.get_by_role("button", name="New conversation").click()  # one turn each: the model's context is 64
        expect(page.locator('#chatbot [data-testid="bot"]')).to_have_count(0, timeout=WAIT_MS)
        shown = chat(page, prompt)
        page.locator('#chatbot button[aria-label="Dislike"]').last.click()
        page.fill("#better textarea", opposite(shown))
        page.click("#send-better")
        expect(page.locator("#better")).to_be_hidden(timeout=WAIT_MS)  # hidden once the store took it
        status(page, "stored as feedback")
    watch.check()
    after = store.path.read_bytes()
    assert after.startswith(before)
    round_store = tmp_path / "round.jsonl"
    round_store.write_bytes(after[len(before):])  # this round's records, as the server wrote them
    new = list(FeedbackStore(round_store).records())
    pairs, counts = preference_pairs(new)
    assert counts == {"corrections": 3, "rated_pairs": 0, "unused": 0}
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        (r["request"], r["corrected_text"], answer_content(r["response"])) for r in new]
    out = tmp_path / "dpo"
    run_cli(["fit", "--config", "configs/experiment/preference.yaml", "--model.init_from", server.checkpoint,
             "--data.train", str(round_store), "--data.batch_size", "3", "--trainer.max_steps", "2",
             "--model.optimizer.warmup_steps", "1", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar",
             "false", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir",
             str(out), "--trainer.default_root_dir", str(out), "--plots.enabled", "false"], REPO, tmp_path)
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(next(out.glob("**/metrics.csv"))))
              if r.get("train_loss")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as its reference: -log sigmoid(0)
    assert list(out.glob("**/checkpoints/*.ckpt"))


# ---------------------------------------------------------------------------------------------- a classifier
def test_the_classifier_page_gives_a_label_and_stores_the_corrected_one(classifier_server, page, watch):
    server, store = classifier_server
    page = open_pages(page, watch, server)
    page.fill("#text textarea", "a gripping , funny film")
    page.click("#classify")
    expect(page.locator("#judge-row")).to_be_visible(timeout=WAIT_MS)
    served = httpx.post(f"{server.base_url}/v1/classify", json={"input": "a gripping , funny film"}).json()["data"][0]
    result = page.locator("#result").inner_text()
    assert served["label"] in result and CLASSES[1] in result  # both classes listed, the one with HTML as text
    other = CLASSES[1 - served["label_id"]]
    page.locator("#corrected-label input").fill(other)
    page.keyboard.press("Enter")
    page.click("#send-correction")
    status(page, "stored as feedback")
    (record,) = records(store)
    assert (record["kind"], record["request"], record["corrected_label"], record["rating"]) == (
        "classification", "a gripping , funny film", other, -1)
    assert record["response"].startswith("{") and f'"label": "{served["label"]}"' in record["response"]
    page.get_by_role("tab", name="Dashboard").click()
    status(page, "1 records in the last 24h", box="#summary")
    training = {"negative": "3310", CLASSES[1]: "3610"}  # SST-2's training file, named in the checkpoint
    assert sorted(table(page, "#label-mix")) == sorted(
        [label, "1" if label == served["label"] else "0", "1" if label == other else "0", training[label]]
        for label in CLASSES)
    watch.check()
