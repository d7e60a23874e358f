"""Polite page fetching for URL lists: robots.txt, per-host pacing, retries, size and type limits."""

from __future__ import annotations

import codecs
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import requests

from tasks.config import CollectConfig

MAX_RETRY_AFTER_S = 60.0  # a server asking for longer stalls the whole collection; we give up sooner
MAX_REDIRECTS = 5
_MAX_ROBOTS_BYTES = 500 * 1024  # the size Google reads of a robots.txt
_CHUNK = 64 * 1024
_HTML_TYPES = {"application/xhtml+xml"}
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)


@dataclass
class FetchResult:
    url: str
    ok: bool
    status: int | None  # last HTTP status, None if no answer
    text: str | None  # decoded body when ok
    content_type: str | None  # media type, e.g. "text/html"
    attempts: int  # requests made for the page (robots.txt not counted)
    error: str | None


class _Failure(Exception):
    """Ends one attempt; `retry` says whether another attempt may help, `wait` overrides the backoff."""

    def __init__(self, error: str, retry: bool = False, wait: float | None = None) -> None:
        super().__init__(error)
        self.error, self.retry, self.wait = error, retry, wait


class Fetcher:
    """Fetches pages one at a time through one session. Not thread-safe: use one per worker."""

    def __init__(
        self,
        cfg: CollectConfig,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._sleep, self._clock = sleep, clock
        self._session = requests.Session()
        self._session.headers["User-Agent"] = cfg.user_agent
        self._session.headers["Accept"] = "text/html,application/xhtml+xml;q=0.9,text/*;q=0.8"
        self._robots: dict[str, RobotFileParser] = {}
        self._last_start: dict[str, float] = {}
        self.robots_failures: dict[str, str] = {}  # origin -> why its robots.txt could not be read

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, url: str) -> FetchResult:
        result = FetchResult(url, False, None, None, None, 0, None)
        try:
            self._check_allowed(url)
        except _Failure as f:
            result.error = f.error
            return result
        for attempt in range(1 + self.cfg.url_retries):
            result.attempts = attempt + 1
            try:
                result.text = self._attempt(url, result)
                result.ok, result.error = True, None
                return result
            except _Failure as f:
                result.error = f.error
                if not f.retry:
                    return result
                if attempt < self.cfg.url_retries:
                    backoff = self.cfg.url_backoff_s * 2**attempt
                    self._sleep(backoff if f.wait is None else max(backoff, f.wait))
        result.error = f"{result.error} after {result.attempts} attempts"
        return result

    def _attempt(self, url: str, result: FetchResult) -> str:
        # Redirects are followed by hand so that every hop is checked against robots.txt and paced.
        for hop in range(MAX_REDIRECTS + 1):
            if hop:
                self._check_allowed(url)
            with self._get(url, follow=False) as resp:
                result.status = resp.status_code
                if resp.is_redirect:
                    url = urljoin(url, resp.headers["location"])
                    continue
                return self._read_page(resp, result)
        raise _Failure(f"more than {MAX_REDIRECTS} redirects")

    def _read_page(self, resp: requests.Response, result: FetchResult) -> str:
        status = resp.status_code
        if status == 429 or status >= 500:
            raise _Failure(f"HTTP {status}", retry=True, wait=_retry_after(resp))
        if not 200 <= status < 300:
            raise _Failure(f"HTTP {status}")
        media, charset = _parse_content_type(resp.headers.get("content-type"))
        result.content_type = media
        if media is not None and not (media.startswith("text/") or media in _HTML_TYPES):
            raise _Failure(f"unsupported content-type {media}")
        return _decode(self._read_body(resp, self.cfg.max_page_bytes), charset)

    def _read_body(self, resp: requests.Response, limit: int) -> bytes:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _Failure(f"page larger than {limit} bytes (Content-Length {declared}), cut off")
        # The read timeout bounds each socket read only; this bounds a server that trickles bytes.
        deadline = self._clock() + self.cfg.url_timeout_s
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in resp.iter_content(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _Failure(f"page larger than {limit} bytes, cut off")
                chunks.append(chunk)
                if self._clock() > deadline:
                    raise _Failure("timeout while reading the body", retry=True)
        except requests.RequestException as e:
            raise _Failure(f"body read failed ({type(e).__name__})", retry=True) from None
        return b"".join(chunks)

    def _get(self, url: str, follow: bool) -> requests.Response:
        self._wait_turn(urlsplit(url).hostname or "")
        t = self.cfg.url_timeout_s
        try:
            return self._session.get(url, timeout=(t, t), stream=True, allow_redirects=follow)
        except requests.Timeout:
            raise _Failure("timeout", retry=True) from None
        except requests.ConnectionError as e:
            raise _Failure(f"connection error ({_root_cause(e)})", retry=True) from None
        except requests.RequestException as e:  # malformed URL, redirect loop: retrying cannot help
            raise _Failure(f"request failed ({type(e).__name__}: {e})") from None

    def _wait_turn(self, host: str) -> None:
        last = self._last_start.get(host)
        if last is not None:
            wait = last + self.cfg.per_host_delay_s - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last_start[host] = self._clock()

    def _check_allowed(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise _Failure(f"unsupported scheme {scheme or '(none)'}")
        if not parts.hostname:
            raise _Failure("URL has no host")
        origin = f"{scheme}://{parts.netloc.lower()}"
        rules = self._robots[origin] if origin in self._robots else self._load_robots(origin)
        if not rules.can_fetch(self.cfg.user_agent, url):
            why = self.robots_failures.get(origin)
            raise _Failure(f"robots.txt {why}, host treated as disallowed" if why else "robots.txt disallows")

    def _load_robots(self, origin: str) -> RobotFileParser:
        rules = RobotFileParser(origin + "/robots.txt")
        failure = None
        try:
            with self._get(origin + "/robots.txt", follow=True) as resp:
                status = resp.status_code
                if status == 429 or status >= 500:
                    failure = f"unavailable (HTTP {status})"
                elif status >= 400:  # no robots.txt: no rules, as Google reads it
                    rules.allow_all = True
                else:
                    body = self._read_body(resp, _MAX_ROBOTS_BYTES)
                    rules.parse(body.decode("utf-8", errors="replace").splitlines())
        except _Failure as f:
            failure = f"unreachable ({f.error})"
        if failure:
            # A server that cannot serve robots.txt may be overloaded: stay away from the whole host.
            rules.disallow_all = True
            self.robots_failures[origin] = failure
        self._robots[origin] = rules
        return rules


def read_url_list(text: str) -> list[str]:
    """One URL per line; blank lines and whole-line '#' comments are skipped ('#' inside a URL is kept)."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _parse_content_type(header: str | None) -> tuple[str | None, str | None]:
    if not header:
        return None, None
    msg = Message()
    msg["content-type"] = header
    charset = msg.get_param("charset")
    return msg.get_content_type(), charset if isinstance(charset, str) else None


def _decode(body: bytes, http_charset: str | None) -> str:
    meta = _META_CHARSET.search(body[:4096])
    for name in (http_charset, meta.group(1).decode("ascii") if meta else None):
        if not name:
            continue
        try:
            codec = codecs.lookup(name.strip()).name
        except LookupError:
            continue
        # Browsers read Latin-1 and ASCII labels as windows-1252; pages rely on it for quotes and the euro.
        return body.decode("cp1252" if codec in ("latin-1", "ascii") else codec, errors="replace")
    return body.decode("utf-8", errors="replace")


def _retry_after(resp: requests.Response) -> float | None:
    try:
        seconds = float(resp.headers.get("retry-after", ""))
    except ValueError:  # absent, or the HTTP-date form, which we do not honour
        return None
    return min(seconds, MAX_RETRY_AFTER_S) if math.isfinite(seconds) and seconds >= 0 else None


def _root_cause(exc: BaseException) -> str:
    # requests wraps urllib3 wraps the OS error; the innermost name (ConnectionRefusedError) says the most.
    for _ in range(8):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return type(exc).__name__
