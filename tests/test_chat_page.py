"""The chat page at `GET /` in a real browser: headless Chromium driven by Selenium against a
real `led-local serve` on the bundled model. Skipped only where Chromium or its driver is
missing (`make test` installs Debian's `chromium` and `chromium-driver` when it can).

UPDATE_SCREENSHOT=1 rewrites docs/chat-page.png from the side-by-side test."""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.request

import pytest
from test_serve import KEY, ROOT, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="no Chromium: install Debian's chromium and chromium-driver "
                       "(make test does so when it runs as root or with passwordless sudo)"),
]
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

QUESTION = "Name three colors."
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def open_server(smollm2):
    s = Server(smollm2, "--parallel", "2", "--ctx", "512", "--threads", "1")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def keyed_server(smollm2):
    s = Server(smollm2, "--parallel", "1", "--ctx", "512", "--threads", "1", "--api-key", KEY)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(DRIVER))
    driver.set_window_size(1100, 800)
    yield driver
    driver.quit()


def page(driver, server: Server, *, width: int = 1100, height: int = 800):
    """Open the page on a fresh session (no stored key), the network log emptied."""
    driver.set_window_size(width, height)
    driver.get(server.url + "/health")
    driver.execute_script("sessionStorage.clear()")
    driver.get_log("performance")
    driver.get(server.url + "/")
    return driver


def wait(driver, condition, timeout: float = 30):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition())


def requests_sent(driver) -> list[dict]:
    """The requests the browser sent since the log was last read (DevTools Network events)."""
    out = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            out.append(msg["params"]["request"])
    return out


def posted(sent: list[dict]) -> list[dict]:
    """The JSON bodies of the POST requests among ``sent``."""
    out = []
    for r in sent:
        if r["method"] != "POST":
            continue
        data = r.get("postData")
        if data is None:  # newer Chromium: the body in parts, base64
            data = "".join(base64.b64decode(e["bytes"]).decode() for e in r["postDataEntries"])
        out.append(json.loads(data))
    return out


def assert_local(sent: list[dict], server: Server) -> None:
    assert sent, "the network log is empty"
    external = [r["url"] for r in sent if not r["url"].startswith((server.url + "/", "data:"))]
    assert external == []


def settings(driver, **fields: str) -> None:
    driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
    for name, value in fields.items():
        e = driver.find_element(By.ID, name)
        if e.tag_name == "select":
            e.find_element(By.XPATH, f"option[normalize-space()='{value}']").click()
        elif e.get_attribute("type") == "checkbox":
            if e.is_selected() != (value == "on"):
                e.click()
        else:
            e.clear()
            e.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "#settings summary").click()


def ask(driver, question: str = QUESTION) -> None:
    driver.find_element(By.ID, "prompt").send_keys(question + "\n")


def finished(driver, n: int = 1) -> list:
    """Wait until ``n`` replies show their statistics; return the replies."""
    def done():
        replies = driver.find_elements(By.CSS_SELECTOR, ".reply")
        return len(replies) >= n and all(r.find_element(By.CLASS_NAME, "stats").text
                                         for r in replies[:n])
    wait(driver, done)
    return driver.find_elements(By.CSS_SELECTOR, ".reply")


def stream_text(server: Server, body: dict, key: str | None = None) -> tuple[str, list[dict]]:
    """A streaming chat request straight to the API: its content and its chunks."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(server.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({**body, "stream": True}).encode(),
                                 headers=headers)
    chunks = []
    with urllib.request.urlopen(req, timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, chunks


def test_page_is_small_static_and_needs_no_key(keyed_server):
    total = 0
    for path, kind in [("/", "text/html"), ("/chat.js", "text/javascript"),
                       ("/chat.css", "text/css")]:
        with urllib.request.urlopen(keyed_server.url + path, timeout=10) as r:
            body = r.read()
            assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert b"http://" not in body and b"https://" not in body  # nothing fetched elsewhere
        total += len(body)
    assert total < 100_000
    assert keyed_server.get("/v1/models")[0] == 401  # the API itself still needs the key
    # the Host and Origin checks hold for the page too (DNS rebinding, foreign pages)
    assert keyed_server.get("/", Host="rebound.example")[0] == 403
    assert keyed_server.get("/chat.js", Origin="http://evil.example")[0] == 403
    # only reading the page is public: any other method on its path needs the key
    assert keyed_server.request("POST", "/", b"{}", {"Content-Type": "application/json"})[0] \
        == 401


def test_led_tokens_change_no_token(open_server):
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "seed": 11,
            "method": "led", "exploit": False}
    plain, chunks = stream_text(open_server, body)
    shown, led_chunks = stream_text(open_server, {**body, "stream_options": {"led_tokens": True}})
    assert shown == plain and plain
    assert all("led_tokens" not in c["choices"][0] for c in chunks if c["choices"])
    toks = [t for c in led_chunks if c["choices"] for t in c["choices"][0].get("led_tokens", [])]
    assert len(toks) == 12 and "".join(t["token"] for t in toks) == plain
    for t in toks:  # no exploitation gate: every step explores (SmolLM2 has no thinking marker)
        assert t["gate"] == 1.0 and 0 <= t["depth"] < 8 and len(t["top"]) == 3
        assert t["p_top1"] == t["top"][0][1] and 0 < t["p_top1"] <= 1
    sample = {k: v for k, v in body.items() if k != "exploit"}
    _, chunks = stream_text(open_server, {**sample, "method": "sample",
                                          "stream_options": {"led_tokens": True}})
    toks = [t for c in chunks if c["choices"] for t in c["choices"][0].get("led_tokens", [])]
    assert toks and all(t["gate"] is None and t["depth"] is None for t in toks)


def test_chat_streams_explored_tokens_with_the_settings_sent(browser, open_server):
    d = page(browser, open_server)
    wait(d, lambda: d.find_element(By.ID, "model").text == "SmolLM2-135M-Instruct.Q4_1")
    settings(d, method="led", temperature="0.7", max_tokens="8", seed="5", led_depths="4",
             led_candidates="6", exploit="off")
    ask(d)
    (reply,) = finished(d)
    spans = reply.find_elements(By.CSS_SELECTOR, ".content .tok")
    explored = reply.find_elements(By.CSS_SELECTOR, ".content .tok.x")
    assert len(spans) == 8 and explored == spans  # without the gate every token explores
    assert all(0 <= int(s.get_attribute("data-depth")) < 4 for s in explored)
    assert "explored: depth" in explored[0].get_attribute("title")
    assert "top-1" in explored[0].get_attribute("title")
    stats = reply.find_element(By.CLASS_NAME, "stats").text
    assert "8 tokens" in stats and "explored 8/8 (100%)" in stats and "seed 5" in stats
    assert "tokens/s" in stats
    sent = requests_sent(d)
    assert_local(sent, open_server)
    (body,) = posted(sent)
    assert body["messages"] == [{"role": "user", "content": QUESTION}]
    assert {k: body[k] for k in ("method", "temperature", "max_tokens", "seed", "led_depths",
                                 "led_candidates", "exploit")} == {
        "method": "led", "temperature": 0.7, "max_tokens": 8, "seed": 5, "led_depths": 4,
        "led_candidates": 6, "exploit": False}
    assert body["stream"] is True and body["stream_options"]["led_tokens"] is True
    # the page shows what the API answers to the same request, without the extension
    api = {k: v for k, v in body.items() if k != "stream_options"}
    text, _ = stream_text(open_server, api)
    assert reply.find_element(By.CLASS_NAME, "content").text == text.strip()


def test_stop_cancels_a_streaming_reply(browser, open_server):
    d = page(browser, open_server)
    settings(d, method="sample", max_tokens="400", seed="3", temperature="1.5")
    ask(d, "Write a long story about a dragon.")
    stop = d.find_element(By.ID, "stop")
    # tokens arrive while the reply is still running: it streams
    wait(d, lambda: stop.is_displayed() and len(d.find_element(By.CSS_SELECTOR, ".reply .content")
                                                .text) > 0)
    stop.click()
    (reply,) = finished(d)
    stats = reply.find_element(By.CLASS_NAME, "stats").text
    assert "stopped" in stats
    assert d.find_element(By.ID, "send").is_displayed() and not stop.is_displayed()
    assert open_server.wait_idle()["slots_busy"] == 0  # the server dropped the work
    settings(d, max_tokens="8")
    requests_sent(d)
    ask(d, "And one more color?")  # the conversation goes on after a stop
    assert len(finished(d, 2)) == 2
    (body,) = posted(requests_sent(d))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    d.find_element(By.ID, "new").click()  # a new chat forgets it
    assert d.find_elements(By.CSS_SELECTOR, "#log > *") == []
    ask(d)
    finished(d)
    (body,) = posted(requests_sent(d))
    assert body["messages"] == [{"role": "user", "content": QUESTION}]


def test_key_is_asked_once_and_kept_for_the_session(browser, keyed_server):
    d = page(browser, keyed_server)
    form = d.find_element(By.ID, "keyform")
    wait(d, form.is_displayed)
    d.find_element(By.ID, "key").send_keys(KEY + "\n")
    wait(d, lambda: d.find_element(By.ID, "model").text == "SmolLM2-135M-Instruct.Q4_1")
    assert d.execute_script("return sessionStorage.getItem('led-local-key')") == KEY
    settings(d, max_tokens="6", seed="2")  # (a random seed may end the reply sooner)
    ask(d)
    (reply,) = finished(d)
    assert "6 tokens" in reply.find_element(By.CLASS_NAME, "stats").text
    sent = requests_sent(d)
    assert_local(sent, keyed_server)
    (post,) = [r for r in sent if r["method"] == "POST"]
    assert post["headers"]["Authorization"] == f"Bearer {KEY}"
    d.refresh()  # the same session: no second prompt
    wait(d, lambda: d.find_element(By.ID, "model").text == "SmolLM2-135M-Instruct.Q4_1")
    assert not d.find_element(By.ID, "keyform").is_displayed()


def test_phone_width(browser, open_server):
    d = page(browser, open_server, width=390, height=844)
    width = d.execute_script("return window.innerWidth")
    assert d.execute_script("return document.documentElement.scrollWidth") <= width
    send = d.find_element(By.ID, "send")
    assert send.is_displayed() and send.rect["x"] + send.rect["width"] <= width
    settings(d, max_tokens="6", seed="2", exploit="off")
    ask(d)
    (reply,) = finished(d)
    assert reply.find_element(By.CLASS_NAME, "content").text
    reply.find_element(By.CSS_SELECTOR, ".tok.x").click()  # no hover on a phone: a tap
    assert "explored: depth" in reply.find_element(By.CLASS_NAME, "info").text
    assert d.execute_script("return document.documentElement.scrollWidth") <= width
    assert_local(requests_sent(d), open_server)


def test_thinking_shows_collapsed_and_dim(browser, open_server):
    """reasoning_content deltas from a synthetic stream (the bundled model never thinks)."""
    d = page(browser, open_server)
    d.execute_script("""
        const turn = document.createElement("div");
        document.getElementById("log").append(turn);
        const r = new Reply(turn, "");
        r.chunk({choices: [{index: 0, delta: {reasoning_content: "Colours of the sky..."}}]});
        r.chunk({choices: [{index: 0, delta: {content: "Blue."}}]});
        r.finish();""")
    thinking = d.find_element(By.CSS_SELECTOR, ".reply .thinking")
    assert thinking.is_displayed() and thinking.get_attribute("open") is None
    assert thinking.get_attribute("textContent") == "thinkingColours of the sky..."
    assert "Colours" not in thinking.text  # collapsed: only its summary shows
    assert thinking.value_of_css_property("color") == "rgba(136, 136, 136, 1)"
    assert d.find_element(By.CSS_SELECTOR, ".reply .content").text == "Blue."
    thinking.find_element(By.TAG_NAME, "summary").click()
    assert "Colours of the sky..." in thinking.text


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory):
    """A server of a tiny model with Qwen3's vocabulary and template that thinks, then
    answers (tests/scripted.py)."""
    import scripted
    from test_reasoning_families import FAMILIES

    if not scripted.TEMPLATES.is_dir():
        pytest.skip("llama.cpp's sources are not built (make install)")
    f = FAMILIES["qwen3"]
    model = scripted.write_scripted(
        tmp_path_factory.mktemp("qwen3") / "qwen3.gguf", vocab=f["vocab"],
        template=f["template"], script=f["script"], end=f["end"], specials=f["specials"]).path
    s = Server(model, "--parallel", "1", "--ctx", "512", "--threads", "1", "--led-depths", "4")
    yield s
    assert s.stop() == 0


def test_the_thinking_switch_and_the_second_turn(browser, thinking_server, open_server):
    from test_reasoning_families import ANSWER, REASONING

    d = page(browser, open_server)  # the bundled model's template has no switch
    wait(d, lambda: d.find_element(By.ID, "model").text)
    assert not d.find_element(By.ID, "thinking").find_element(By.XPATH, "..").is_displayed()
    d = page(browser, thinking_server)
    wait(d, lambda: d.find_element(By.ID, "model").text == "qwen3")
    ask(d)
    (reply,) = finished(d)
    thinking = reply.find_element(By.CLASS_NAME, "thinking")
    assert thinking.get_attribute("textContent") == "thinking" + REASONING
    assert reply.find_element(By.CLASS_NAME, "content").text == ANSWER
    settings(d, thinking="off")
    ask(d)
    replies = finished(d, 2)
    assert not replies[1].find_element(By.CLASS_NAME, "thinking").is_displayed()
    assert replies[1].find_element(By.CLASS_NAME, "content").text == ANSWER
    first, second = posted(requests_sent(d))
    assert "thinking" not in first and second["thinking"] is False
    # the first reply went back with its thinking
    assert second["messages"][1] == {"role": "assistant", "content": ANSWER,
                                     "reasoning_content": REASONING}


def test_replay_with_sample_side_by_side(browser, open_server, tmp_path):
    d = page(browser, open_server)
    settings(d, method="led", max_tokens="24", seed="9", compare="on")
    ask(d, "Why is the sky blue?")
    led, sample = finished(d, 2)
    assert led.find_element(By.TAG_NAME, "h4").text == "led"
    assert sample.find_element(By.TAG_NAME, "h4").text == "sample, same seed"
    for r in (led, sample):
        assert "seed 9" in r.find_element(By.CLASS_NAME, "stats").text
    assert sample.find_elements(By.CSS_SELECTOR, ".tok.x") == []
    posts = posted(requests_sent(d))
    assert [p["method"] for p in posts] == ["led", "sample"]
    assert posts[0]["messages"] == posts[1]["messages"] and posts[1]["seed"] == 9
    shot = tmp_path / "chat-page.png"
    d.set_window_size(1000, 580)  # the README's picture: the turn, not the empty log below it
    assert d.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "chat-page.png")


def test_screenshot_is_committed():
    assert (ROOT / "docs" / "chat-page.png").read_bytes()[:4] == b"\x89PNG"
    assert "docs/chat-page.png" in (ROOT / "README.md").read_text()
    assert "chat-page.png" in (ROOT / "docs" / "serving.md").read_text()


@pytest.fixture(scope="module")
def other_origin(tmp_path_factory):
    """A web page of another origin (a plain HTTP server on another port)."""
    import functools
    import http.server
    import threading

    root = tmp_path_factory.mktemp("other-origin")
    (root / "index.html").write_text("<!doctype html><title>another app</title>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


CALL_API = """
const [url, key, done] = arguments;
fetch(url + "/v1/chat/completions", {method: "POST", headers: {
    "Authorization": "Bearer " + key, "Content-Type": "application/json"},
  body: JSON.stringify({messages: [{role: "user", content: "Hi"}], max_tokens: 3})})
  .then(r => r.json().then(b => done({status: r.status, object: b.object || null})))
  .catch(e => done({error: String(e)}));
"""


def test_a_page_of_another_origin_calls_the_api_only_when_cors_origin_names_it(
        browser, smollm2, other_origin):
    """A real browser's CORS: the page of another origin gets answers (its preflight with
    Authorization passes) from a server started with --cors-origin naming that origin, and
    nothing from one without it; the key is still required."""
    allowed = Server(smollm2, "--parallel", "1", "--ctx", "256", "--threads", "1",
                     "--api-key", KEY, "--cors-origin", other_origin)
    closed = Server(smollm2, "--parallel", "1", "--ctx", "256", "--threads", "1",
                    "--api-key", KEY)
    try:
        browser.get(other_origin + "/")
        browser.set_script_timeout(60)
        ok = browser.execute_async_script(CALL_API, allowed.url, KEY)
        assert ok == {"status": 200, "object": "chat.completion"}
        assert browser.execute_async_script(CALL_API, allowed.url, "wrong")["status"] == 401
        refused = browser.execute_async_script(CALL_API, closed.url, KEY)
        assert "error" in refused and "Failed to fetch" in refused["error"]
    finally:
        assert allowed.stop() == 0 and closed.stop() == 0
