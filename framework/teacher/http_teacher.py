"""Teacher scoring through an OpenAI-compatible completions server that speaks vLLM's extras
(e.g. ``vllm serve``): token-id prompts, ``prompt_logprobs=k``, ``max_tokens=1``.

Transport: ``httpx`` for the requests and ``tenacity`` for the retries, rather than a hand-written
``urllib`` client. Both are maintained, widely used libraries: ``httpx`` gives one pooled
connection per teacher (keep-alive across the many scoring requests of a run), typed timeout and
transport errors, and a TLS setup that takes our own ``ssl.SSLContext``; ``tenacity`` gives a
bounded, tested retry loop with exponential backoff and jitter instead of one more ad-hoc loop.

What is retried: HTTP 408/425/429/500/502/503/504, refused or dropped connections and timeouts,
at most ``max_attempts`` tries per request with a backoff of ``backoff_s · 2^n`` (plus jitter, at
most ``backoff_max_s``; a server's ``Retry-After`` is honoured up to that cap). Everything else
fails at the first answer: 401/403/404 and the other 4xx are configuration or data errors that no
retry fixes, and a reply that is not the expected JSON is reported as such.
When the tries run out the error keeps ``retryable=True``, so the driver (``framework.actors.failures``)
can still back off at its own, coarser level.

Security rules:

- The API key is read from an environment variable at each request and only ever placed in the
  ``Authorization`` header of a request to ``base_url`` itself: it is not stored on the object,
  logged, or put into error messages.
- Redirects are never followed. A 3xx answer is an error naming the host it points to, so the
  key cannot reach another host, nor travel over plain http after an https→http redirect.
- Text from the server that goes into an error message is cut to 200 characters and scrubbed:
  the key itself and anything shaped like ``Bearer …`` or ``Authorization: …`` become ``***``.
- Plain http is meant for a server on this machine (loopback); sending the key over plain http to
  another host draws a warning. TLS verification uses the system store or ``ca_cert``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import warnings
from typing import Any
from urllib.parse import urlparse

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from framework.teacher.base import (
    TeacherConfigError,
    TeacherInputTooLong,
    check_request,
    check_top_k,
    empty_scores,
    scores_from_candidates,
)
from framework.types import TeacherRequest, TeacherScores


class TeacherHTTPError(RuntimeError):
    """The teacher server answered with an error (or not at all).

    ``retryable``: a fault that may clear by itself (no answer, a timeout, HTTP 408/429/503...); the
    driver retries those with backoff and stops the run on the others (see ``framework.actors.failures``).
    ``status``: the HTTP status of the answer, None when there was none (or it was a 2xx we could not use).
    ``attempts``: how many tries were made before giving up.
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.attempts = 1
        self.retry_after: float | None = None  # the server's Retry-After, in seconds


class TeacherHTTPInputTooLong(TeacherHTTPError, TeacherInputTooLong):
    """HTTP 400 because a sequence exceeds the server's context length: a data error (skipped, counted)."""

    def __init__(self, message: str, status: int | None = 400):
        TeacherHTTPError.__init__(self, message, status)
        self.sample_ids = ()


class TeacherHTTPConfigError(TeacherHTTPError, TeacherConfigError):
    """An answer that shows the client is set up wrong (a redirect, an untrusted TLS certificate):
    the same on every try, so the driver stops the run (``TeacherConfigError`` is classified FATAL)."""


RETRYABLE_STATUS = (408, 425, 429, 500, 502, 503, 504)
# how vLLM's server words a prompt longer than its max_model_len (older and newer releases)
_TOO_LONG = re.compile(r"maximum context length|longer than the maximum model length", re.IGNORECASE)
DETAIL_CHARS = 200  # server text quoted in an error message
_BEARER = re.compile(r"\bbearer\s+[^\s\"',;}]+", re.IGNORECASE)
_AUTH_FIELD = re.compile(r"(\bauthorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+", re.IGNORECASE)


def _is_loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def scrub(text: str, key: str | None = None, limit: int = DETAIL_CHARS) -> str:
    """``text`` on one line, with ``key`` and bearer/authorization values replaced by ``***``, then
    cut to ``limit`` characters (scrubbed first, so a key cut in half cannot survive)."""
    if key:
        text = text.replace(key, "***")
    text = _AUTH_FIELD.sub(r"\g<1>***", _BEARER.sub("Bearer ***", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HttpTeacher:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "TOKENBRIDGE_TEACHER_API_KEY",
        verify_tls: bool = True,
        ca_cert: str | None = None,
        timeout_s: float = 60.0,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_prompts_per_request: int = 64,
    ):
        url = urlparse(base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"base_url={base_url!r} must look like http(s)://host:port (optionally /v1)")
        if timeout_s <= 0 or max_attempts < 1 or backoff_s < 0 or backoff_max_s < 0:
            raise ValueError(
                f"need timeout_s > 0, max_attempts >= 1 and backoff >= 0 (got timeout_s={timeout_s}, "
                f"max_attempts={max_attempts}, backoff_s={backoff_s}, backoff_max_s={backoff_max_s})"
            )
        root = base_url.rstrip("/")
        self.completions_url = root + ("/completions" if root.endswith("/v1") else "/v1/completions")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_prompts_per_request = max_prompts_per_request
        verify: ssl.SSLContext | bool = False
        if url.scheme == "https":
            verify = ssl.create_default_context(cafile=ca_cert)  # the system store, or only ca_cert
            if not verify_tls:
                verify.check_hostname = False
                verify.verify_mode = ssl.CERT_NONE
        elif api_key_env and os.environ.get(api_key_env) and not _is_loopback(url.hostname):
            warnings.warn(
                f"sending the API key from ${api_key_env} over plain http to {url.hostname}; use https",
                stacklevel=2,
            )
        # follow_redirects=False: the key must never go to a host other than base_url's (see above)
        self._client = httpx.Client(verify=verify, timeout=httpx.Timeout(timeout_s), follow_redirects=False)
        self._backoff = wait_exponential(multiplier=backoff_s, max=backoff_max_s) + wait_random(0, backoff_s)

    def close(self) -> None:
        self._client.close()

    def _key(self) -> str | None:
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    # ---------------------------------------------------------------- one request, with retries
    def _post(self, payload: dict[str, Any]) -> Any:
        tries = 0

        def once() -> Any:
            nonlocal tries
            tries += 1
            return self._post_once(payload)

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, TeacherHTTPError) and e.retryable),
            reraise=True,
        )
        try:
            return retrying(once)
        except TeacherHTTPError as e:
            e.attempts = tries
            if tries > 1:
                e.args = (f"{e.args[0]} (gave up after {tries} attempts)", *e.args[1:])
            raise

    def _wait(self, state: RetryCallState) -> float:
        delay = float(self._backoff(state))
        error = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(error, "retry_after", None)
        return max(delay, min(hint, self.backoff_max_s)) if hint else delay

    def _post_once(self, payload: dict[str, Any]) -> Any:
        key = self._key()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            resp = self._client.post(self.completions_url, json=payload, headers=headers)
        except httpx.TimeoutException:
            raise TeacherHTTPError(
                f"teacher server {self.completions_url} did not answer within {self.timeout_s} s",
                retryable=True,
            ) from None
        except httpx.TransportError as e:
            cert = _find(e, ssl.SSLCertVerificationError)
            if cert is not None:
                raise TeacherHTTPConfigError(
                    f"teacher server {self.completions_url}: TLS certificate not trusted "
                    f"({scrub(str(getattr(cert, 'verify_message', '') or cert), key)}); set teacher.ca_cert "
                    "to the CA file that signed it"
                ) from None
            raise TeacherHTTPError(
                f"cannot reach teacher server {self.completions_url}: {scrub(str(e) or type(e).__name__, key)}",
                retryable=True,
            ) from None
        except httpx.HTTPError as e:  # e.g. a body that cannot be decoded
            raise TeacherHTTPError(
                f"request to teacher server {self.completions_url} failed: {scrub(str(e), key)}"
            ) from None
        if resp.is_redirect or 300 <= resp.status_code < 400:
            where = _redirect_target(resp.headers.get("location", ""), key)
            raise TeacherHTTPConfigError(
                f"teacher server {self.completions_url} answered HTTP {resp.status_code}, a redirect to "
                f"{where}; redirects are not followed (the API key must not leave this host): set "
                "teacher.url to the final address",
                resp.status_code,
            )
        if resp.status_code >= 400:
            raise self._status_error(resp, key)
        if not 200 <= resp.status_code < 300:
            raise TeacherHTTPError(
                f"teacher server {self.completions_url} answered HTTP {resp.status_code}", resp.status_code
            )
        try:
            return resp.json()
        except ValueError:
            kind = "an HTML page" if _looks_html(resp) else "a body that is not JSON"
            raise TeacherHTTPError(
                f"teacher server {self.completions_url} answered HTTP {resp.status_code} with {kind} "
                f"({resp.headers.get('content-type', 'no content type')}), not a JSON completion; is "
                f"teacher.url the API root (e.g. https://host:port/v1)? Body: {scrub(resp.text, key)}"
            ) from None

    def _status_error(self, resp: httpx.Response, key: str | None) -> TeacherHTTPError:
        code = resp.status_code
        if code in (401, 403):
            hint = (
                f"check ${self.api_key_env}"
                if self.api_key_env
                else "set api_key_env to the variable holding the key"
            )
            return TeacherHTTPError(
                f"teacher server {self.completions_url} rejected the API key (HTTP {code}): {hint}", code
            )
        detail = _error_detail(resp, key)
        message = f"teacher server {self.completions_url} answered HTTP {code}: {detail}"
        if code == 400 and _TOO_LONG.search(detail):
            return TeacherHTTPInputTooLong(message, code)
        if code == 404:
            message += " (check teacher.url and teacher.http_model)"
        error = TeacherHTTPError(message, code, retryable=code in RETRYABLE_STATUS)
        error.retry_after = _retry_after(resp) if error.retryable else None
        return error

    # ---------------------------------------------------------------- scoring
    def score(self, requests: list[TeacherRequest], top_k: int) -> list[TeacherScores]:
        check_top_k(top_k)
        all_ids = [check_request(r) for r in requests]
        results = [empty_scores(r.sample_id, top_k) for r in requests]
        todo = [i for i, r in enumerate(requests) if r.response_start < len(all_ids[i])]
        for lo in range(0, len(todo), self.max_prompts_per_request):
            chunk = todo[lo : lo + self.max_prompts_per_request]
            reply = self._post(
                {
                    "model": self.model,
                    "prompt": [all_ids[i].tolist() for i in chunk],
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "prompt_logprobs": top_k,
                }
            )
            choices = _choices(reply, len(chunk))
            for n, (i, choice) in enumerate(zip(chunk, choices)):
                positions = _positions(choice, n)
                results[i] = scores_from_candidates(requests[i], all_ids[i], positions, top_k)
        return results


# -------------------------------------------------------------------- reply checks
def _malformed(what: str) -> TeacherHTTPError:
    return TeacherHTTPError(f"teacher server reply is malformed: {what}")


def _choices(reply: Any, expected: int) -> list[dict[str, Any]]:
    """The reply's choices in prompt order (by ``index``), checked for shape and count."""
    if not isinstance(reply, dict):
        raise _malformed(f"expected a JSON object, got {type(reply).__name__}")
    choices = reply.get("choices", [])
    if not isinstance(choices, list):
        raise _malformed(f"'choices' is a {type(choices).__name__}, not a list")
    for n, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise _malformed(f"choices[{n}] is a {type(choice).__name__}, not an object")
        if not isinstance(choice.get("index"), int):
            raise _malformed(f"choices[{n}] has no integer field 'index'")
    if len(choices) != expected:
        raise TeacherHTTPError(f"teacher server returned {len(choices)} choices for {expected} prompts")
    return sorted(choices, key=lambda c: c["index"])


def _positions(choice: dict[str, Any], n: int) -> list[dict[int, tuple[float, Any]] | None]:
    """``prompt_logprobs`` of one choice as {token id: (logprob, rank)} per position (None: no entry)."""
    raw = choice.get("prompt_logprobs")
    if raw is None:
        raise TeacherHTTPError(
            "teacher server returned no prompt_logprobs; it must support vLLM's extra "
            "`prompt_logprobs` completion parameter"
        )
    if not isinstance(raw, list):
        raise _malformed(f"choices[{n}].prompt_logprobs is a {type(raw).__name__}, not a list")
    positions: list[dict[int, tuple[float, Any]] | None] = []
    for p, d in enumerate(raw):
        if d is None:
            positions.append(None)
            continue
        if not isinstance(d, dict):
            raise _malformed(f"choices[{n}].prompt_logprobs[{p}] is a {type(d).__name__}, not an object")
        entry: dict[int, tuple[float, Any]] = {}
        for t, c in d.items():
            if not isinstance(c, dict) or "logprob" not in c:
                raise _malformed(f"choices[{n}].prompt_logprobs[{p}][{t!r}] has no field 'logprob'")
            try:
                entry[int(t)] = (c["logprob"], c.get("rank"))
            except ValueError:
                raise _malformed(
                    f"choices[{n}].prompt_logprobs[{p}] has a key {t!r} that is not a token id"
                ) from None
        positions.append(entry)
    return positions


# -------------------------------------------------------------------- helpers
def _find(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``error``'s cause/context chain."""
    seen: BaseException | None = error
    for _ in range(16):
        if seen is None or isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _redirect_target(location: str, key: str | None) -> str:
    """Where a 3xx points, for the message: scheme://host:port (never userinfo, path or query)."""
    target = urlparse(location.strip())
    if not target.hostname:
        return f"{scrub(target.path, key, 80)!r} on the same host" if target.path else "nowhere (no Location)"
    try:
        port = f":{target.port}" if target.port else ""
    except ValueError:
        port = ""
    return f"{target.scheme or 'the same scheme'}://{target.hostname}{port}"


def _looks_html(resp: httpx.Response) -> bool:
    return "html" in resp.headers.get("content-type", "").lower() or resp.text.lstrip()[:1] == "<"


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: ignored, the exponential backoff applies
        return None


def _error_detail(resp: httpx.Response, key: str | None) -> str:
    """The server's error message (OpenAI/vLLM ``{"error": {"message": ...}}`` shape, or the raw body), scrubbed."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        text = str(message or data.get("message") or data.get("detail") or data)
    else:
        text = resp.text.strip() or resp.reason_phrase or "no detail"
    return scrub(text, key)
