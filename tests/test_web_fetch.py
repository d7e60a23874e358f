"""The URL fetcher against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.config import CollectConfig
from tasks.corpus.web import MAX_RETRY_AFTER_S, Fetcher, read_url_list

SPANISH = "Año nuevo en Logroño: la cigüeña, el pingüino y el señor García cenaron jamón."
ARTICLE = [
    SPANISH,
    "La fiesta empezó tarde, cuando los vecinos bajaron a la plaza con faroles y guitarras.",
    "¿Quién trajo el turrón? Nadie lo supo, pero a medianoche ya no quedaba ni un trozo en la mesa.",
    "Al día siguiente, el periódico local publicó una crónica larga sobre la celebración del año nuevo.",
]
PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>Señal</title></head><body>'
    '<nav><a href="/">Inicio</a> | <a href="/blog">Blog</a></nav>'
    f"<article><h1>Crónica de Logroño</h1>{''.join(f'<p>{p}</p>' for p in ARTICLE)}</article>"
    "<footer>© Periódico de ejemplo</footer></body></html>"
)
ROBOTS = "User-agent: *\nDisallow: /private/\n"
BIG = 2_000


@dataclass
class Site:
    base: str
    log: list[tuple[str, float]] = field(default_factory=list)  # (path, monotonic time at arrival)
    hits: Counter[str] = field(default_factory=Counter)
    agents: list[str] = field(default_factory=list)
    robots_status: int = 200

    def paths(self) -> list[str]:
        return [p for p, _ in self.log]


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def send(self, status: int, body: bytes, ctype: str = "text/html", length: bool = True, **hdr: str):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if length:
                self.send_header("Content-Length", str(len(body)))
            for k, v in hdr.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path
            site.log.append((path, time.monotonic()))
            site.hits[path] += 1
            site.agents.append(self.headers.get("User-Agent", ""))
            n = site.hits[path]
            html = PAGE.encode()
            if path == "/robots.txt":
                self.send(site.robots_status, ROBOTS.encode(), "text/plain")
            elif path == "/flaky":
                self.send(503, b"busy") if n <= 2 else self.send(200, html)
            elif path.startswith("/busy/"):  # 429 with Retry-After: <seconds> once
                after = path.rsplit("/", 1)[1]
                self.send(429, b"slow down", Retry_After=after) if n == 1 else self.send(200, html)
            elif path == "/down":
                self.send(503, b"down")
            elif path == "/slow":
                if n == 1:
                    time.sleep(1.0)
                self.send(200, html)
            elif path == "/big":
                self.send(200, b"<p>" + b"x" * BIG * 2 + b"</p>")
            elif path == "/big-stream":  # no Content-Length: the limit must hold while streaming
                self.send(200, b"<p>" + b"x" * BIG * 2 + b"</p>", length=False)
            elif path == "/doc.pdf":
                self.send(200, b"%PDF-1.4 ...", "application/pdf")
            elif path == "/latin":
                self.send(200, "<p>Años del señor</p>".encode("latin-1"), "text/html; charset=ISO-8859-1")
            elif path == "/moved-private":
                self.send(301, b"", Location="/private/secret")
            elif path == "/moved":
                self.send(302, b"", Location="/page")
            elif path == "/page" or path.startswith("/private/"):
                self.send(200, html)
            else:
                self.send(404, b"not here")

    return Handler


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    s = Site(base=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(s)
    server.handle_error = lambda *_: None  # a client that timed out leaves a broken pipe: expected here
    # A short poll interval keeps shutdown (and so each test) from waiting the default 0.5 s.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield s
    server.shutdown()
    server.server_close()


def _cfg(**kw: object) -> CollectConfig:
    base: dict[str, object] = dict(
        url_timeout_s=0.5, url_retries=3, url_backoff_s=0.01, per_host_delay_s=0.0, max_page_bytes=BIG
    )
    return CollectConfig(**{**base, **kw})


class FakeTime:
    """A clock that only moves when slept on, so long delays cost nothing."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_retries_503_then_decodes_utf8_meta_charset(site: Site) -> None:
    r = Fetcher(_cfg()).fetch(site.base + "/flaky")
    assert r.ok, r.error
    assert (r.status, r.attempts, r.content_type, r.error) == (200, 3, "text/html", None)
    assert r.text is not None and SPANISH in r.text and "Señal" in r.text
    assert site.hits["/flaky"] == 3


def test_gives_up_after_configured_retries(site: Site) -> None:
    r = Fetcher(_cfg(url_retries=2)).fetch(site.base + "/down")
    assert not r.ok and r.text is None
    assert (r.status, r.attempts, r.error) == (503, 3, "HTTP 503 after 3 attempts")


def test_404_is_not_retried(site: Site) -> None:
    r = Fetcher(_cfg()).fetch(site.base + "/missing")
    assert not r.ok
    assert (r.status, r.attempts, r.error) == (404, 1, "HTTP 404")
    assert site.hits["/missing"] == 1


def test_robots_disallow_means_no_request(site: Site) -> None:
    f = Fetcher(_cfg())
    r = f.fetch(site.base + "/private/secret.html")
    assert not r.ok and r.attempts == 0 and r.status is None
    assert r.error is not None and "robots.txt" in r.error
    assert f.fetch(site.base + "/page").ok
    assert not any(p.startswith("/private/") for p in site.paths())
    assert site.hits["/robots.txt"] == 1  # read once per host


def test_redirect_into_disallowed_path_is_not_followed(site: Site) -> None:
    f = Fetcher(_cfg())
    moved = f.fetch(site.base + "/moved")
    assert moved.ok and moved.text is not None and SPANISH in moved.text
    blocked = f.fetch(site.base + "/moved-private")
    assert not blocked.ok and blocked.error == "robots.txt disallows"
    assert not any(p.startswith("/private/") for p in site.paths())


def test_robots_404_allows_everything(site: Site) -> None:
    site.robots_status = 404
    r = Fetcher(_cfg()).fetch(site.base + "/private/secret.html")
    assert r.ok, r.error


def test_robots_5xx_disallows_the_host_and_is_recorded(site: Site) -> None:
    site.robots_status = 503
    f = Fetcher(_cfg())
    r = f.fetch(site.base + "/page")
    assert not r.ok and r.attempts == 0
    assert r.error is not None and "robots.txt" in r.error and "503" in r.error
    assert site.paths() == ["/robots.txt"]
    assert f.robots_failures == {site.base: "unavailable (HTTP 503)"}


def test_unreachable_host_is_not_hammered(site: Site) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = Fetcher(_cfg()).fetch(f"http://127.0.0.1:{port}/page")
    assert not r.ok and r.attempts == 0
    assert r.error is not None and r.error.startswith("robots.txt unreachable (connection error")


def test_timeout_is_retried(site: Site) -> None:
    start = time.monotonic()
    r = Fetcher(_cfg()).fetch(site.base + "/slow")
    assert r.ok, r.error
    assert r.attempts == 2 and r.text is not None and SPANISH in r.text
    assert time.monotonic() - start < 1.0  # gave up on the first answer at the timeout, did not wait it out


@pytest.mark.parametrize("path", ["/big", "/big-stream"])
def test_oversized_page_is_cut_off(site: Site, path: str) -> None:
    r = Fetcher(_cfg()).fetch(site.base + path)
    assert not r.ok and r.text is None and r.attempts == 1
    assert r.error is not None and f"larger than {BIG} bytes" in r.error


def test_unsupported_scheme_makes_no_request(site: Site) -> None:
    r = Fetcher(_cfg()).fetch("ftp://127.0.0.1/file.html")
    assert not r.ok and r.attempts == 0 and r.status is None
    assert r.error == "unsupported scheme ftp"
    assert site.log == []


def test_pdf_is_refused(site: Site) -> None:
    r = Fetcher(_cfg()).fetch(site.base + "/doc.pdf")
    assert not r.ok and r.text is None
    assert (r.status, r.content_type) == (200, "application/pdf")
    assert r.error == "unsupported content-type application/pdf"


def test_http_charset_latin1(site: Site) -> None:
    r = Fetcher(_cfg()).fetch(site.base + "/latin")
    assert r.ok and r.text == "<p>Años del señor</p>"


def test_user_agent_is_sent(site: Site) -> None:
    assert Fetcher(_cfg(user_agent="ForjaTest/9")).fetch(site.base + "/page").ok
    assert site.agents == ["ForjaTest/9", "ForjaTest/9"]  # robots.txt, then the page


def test_politeness_delay_between_requests_to_one_host(site: Site) -> None:
    f = Fetcher(_cfg(per_host_delay_s=0.2))
    assert f.fetch(site.base + "/page").ok
    assert f.fetch(site.base + "/page").ok
    times = [t for _, t in site.log]
    assert site.paths() == ["/robots.txt", "/page", "/page"]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g >= 0.2 - 0.02 for g in gaps), gaps  # small slack: times are taken at the server


def test_politeness_and_backoff_use_the_injected_clock(site: Site) -> None:
    t = FakeTime()
    f = Fetcher(_cfg(per_host_delay_s=30.0), sleep=t.sleep, clock=t.clock)
    assert f.fetch(site.base + "/page").ok  # robots.txt at 1000, page at 1030
    assert f.fetch(site.base + "/flaky").ok  # 1060, then backoff 0.01 and 0.02 are inside the 30 s pacing
    assert t.sleeps == pytest.approx([30.0, 30.0, 0.01, 29.99, 0.02, 29.98])
    assert t.now == pytest.approx(1000.0 + 4 * 30.0)


@pytest.mark.parametrize(("after", "waited"), [("7", 7.0), ("3600", MAX_RETRY_AFTER_S)])
def test_retry_after_is_honoured_and_capped(site: Site, after: str, waited: float) -> None:
    t = FakeTime()
    r = Fetcher(_cfg(), sleep=t.sleep, clock=t.clock).fetch(f"{site.base}/busy/{after}")
    assert r.ok and r.attempts == 2
    assert t.sleeps == [waited]


def test_read_url_list() -> None:
    text = "# seeds\n\n  https://a.example/x  \n\t\nhttp://b.example/#frag\n   # indented comment\nhttps://c.example\n"
    assert read_url_list(text) == ["https://a.example/x", "http://b.example/#frag", "https://c.example"]


def test_collect_reads_url_lists_and_records_failures(site: Site, tmp_path) -> None:
    """The collect stage end to end: fetched pages become documents, every failure is recorded."""
    import json

    from tasks.config import CorpusConfig
    from tasks.corpus.collect import collect
    from tasks.corpus.shards import iter_records
    from tasks.storage import Storage

    urls = ["/flaky", "/missing", "/private/secret.html", "/slow", "/page"]
    (tmp_path / "pages.urls").write_text(
        "# nightly list\n" + "\n".join(site.base + u for u in urls) + "\nftp://example.org/file\n"
    )
    cfg = CorpusConfig.model_validate(
        {"collect": _cfg(max_page_bytes=100_000).model_dump(), "tasks": 1, "workers": 1}
    )
    storage = Storage(str(tmp_path / "store"))
    m = collect(storage, cfg, [str(tmp_path / "pages.urls")])
    docs = {r["id"]: r for r in iter_records(storage.datafolder("collect", m.key, "shards"))}
    assert set(docs) == {site.base + u for u in ("/flaky", "/slow", "/page")}
    for doc in docs.values():
        assert "Logroño" in doc["text"] and "Inicio | Blog" not in doc["text"], "main text only"
        assert doc["metadata"]["lang"] == "es" and doc["metadata"]["url"] == doc["id"]
    problems = {p["source"]: p for p in json.loads(storage.read_text("collect", m.key, "problems.json"))}
    assert problems[site.base + "/missing"]["reason"] == "HTTP 404"
    assert "robots.txt" in problems[site.base + "/private/secret.html"]["reason"]
    assert "ftp" in problems["ftp://example.org/file"]["reason"]
    assert (m.stats["urls_fetched"], m.stats["urls_failed"]) == (3, 3)
    assert not any(p.startswith("/private/") for p in site.paths())
    assert site.hits["/flaky"] == 3, "two 503 answers retried, nothing lost"
