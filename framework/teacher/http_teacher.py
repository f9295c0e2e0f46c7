"""Teacher scoring through an OpenAI-compatible completions server that speaks vLLM's extras
(e.g. ``vllm serve``): token-id prompts, ``prompt_logprobs=k``, ``max_tokens=1``.

The API key is read from an environment variable at each request and only ever placed in the
``Authorization`` header: it is not stored on the object, logged, or put into error messages.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import urllib.error
import urllib.request
import warnings
from typing import Any
from urllib.parse import urlparse

from framework.teacher.base import (
    TeacherInputTooLong,
    check_request,
    check_top_k,
    empty_scores,
    scores_from_candidates,
)
from framework.types import TeacherRequest, TeacherScores


class TeacherHTTPError(RuntimeError):
    """The teacher server answered with an error (or not at all).

    ``retryable``: a fault that may clear by itself (no answer, a timeout, HTTP 408/429/5xx); the
    driver retries those with backoff and stops the run on the others (see ``framework.actors.failures``).
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class TeacherHTTPInputTooLong(TeacherHTTPError, TeacherInputTooLong):
    """HTTP 400 because a sequence exceeds the server's context length: a data error (skipped, counted)."""

    def __init__(self, message: str, status: int | None = 400):
        TeacherHTTPError.__init__(self, message, status)
        self.sample_ids = ()


RETRYABLE_STATUS = (408, 425, 429, 500, 502, 503, 504)
# how vLLM's server words a prompt longer than its max_model_len (older and newer releases)
_TOO_LONG = re.compile(r"maximum context length|longer than the maximum model length", re.IGNORECASE)


def _is_loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        max_prompts_per_request: int = 64,
    ):
        url = urlparse(base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"base_url={base_url!r} must look like http(s)://host:port (optionally /v1)")
        root = base_url.rstrip("/")
        self.completions_url = root + ("/completions" if root.endswith("/v1") else "/v1/completions")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_prompts_per_request = max_prompts_per_request
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=ca_cert)
            if not verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        elif api_key_env and os.environ.get(api_key_env) and not _is_loopback(url.hostname):
            warnings.warn(
                f"sending the API key from ${api_key_env} over plain http to {url.hostname}; use https",
                stacklevel=2,
            )

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        req = urllib.request.Request(self.completions_url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ssl) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code in (401, 403):
                hint = (
                    f"check ${self.api_key_env}"
                    if self.api_key_env
                    else "set api_key_env to the variable holding the key"
                )
                raise TeacherHTTPError(
                    f"teacher server {self.completions_url} rejected the API key (HTTP {e.code}): {hint}",
                    e.code,
                ) from None
            message = f"teacher server {self.completions_url} answered HTTP {e.code}: {detail}"
            if e.code == 400 and _TOO_LONG.search(detail):
                raise TeacherHTTPInputTooLong(message, e.code) from None
            raise TeacherHTTPError(message, e.code, retryable=e.code in RETRYABLE_STATUS) from None
        except urllib.error.URLError as e:
            raise TeacherHTTPError(
                f"cannot reach teacher server {self.completions_url}: {e.reason}", retryable=True
            ) from None
        except TimeoutError:
            raise TeacherHTTPError(
                f"teacher server {self.completions_url} did not answer within {self.timeout_s} s",
                retryable=True,
            ) from None

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
            choices = sorted(reply.get("choices", []), key=lambda c: c["index"])
            if len(choices) != len(chunk):
                raise TeacherHTTPError(
                    f"teacher server returned {len(choices)} choices for {len(chunk)} prompts"
                )
            for i, choice in zip(chunk, choices):
                raw = choice.get("prompt_logprobs")
                if raw is None:
                    raise TeacherHTTPError(
                        "teacher server returned no prompt_logprobs; it must support vLLM's extra "
                        "`prompt_logprobs` completion parameter"
                    )
                positions = [
                    None if d is None else {int(t): (c["logprob"], c.get("rank")) for t, c in d.items()}
                    for d in raw
                ]
                results[i] = scores_from_candidates(requests[i], all_ids[i], positions, top_k)
        return results


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(e.read())
        message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else None
        return str(message or data.get("message") or data)[:500]
    except Exception:
        return e.reason if isinstance(e.reason, str) else "no detail"
