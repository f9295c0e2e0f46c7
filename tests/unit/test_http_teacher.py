"""HttpTeacher (framework/teacher/http_teacher.py) against real local servers on 127.0.0.1: plain
HTTP and HTTPS with a certificate made at test time. Retries, redirects, scrubbing, malformed replies."""

from __future__ import annotations

import datetime
import ipaddress
import json
import pickle
import re
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from framework.actors.failures import Kind, classify
from framework.config import Config, ConfigError, validate
from framework.teacher.base import TeacherConfigError
from framework.teacher.http_teacher import (
    DETAIL_CHARS,
    HttpTeacher,
    TeacherHTTPConfigError,
    TeacherHTTPError,
    TeacherHTTPInputTooLong,
    scrub,
)
from framework.types import TeacherRequest

KEY_ENV = "TB_TEST_TEACHER_KEY"
KEY = "sk-test-0123456789abcdef"
FAST = dict(backoff_s=0.001, backoff_max_s=0.01, timeout_s=5.0)


# ---------------------------------------------------------------- a scripted local server
class Server:
    """Answers the n-th request with ``answers[n]`` (the last one repeats): ``(status, headers, body)``
    or a callable of the request's JSON returning one. Records every request it gets."""

    def __init__(self, *answers, tls: tuple[str, str] | None = None):
        self.answers = list(answers)
        self.seen: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer._answer(self)

            do_GET = do_POST

            def log_message(self, *args):  # keep the test output clean
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *args: None  # a client that hung up early is expected here
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.origin = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_port}"
        self.url = self.origin + "/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        payload = json.loads(raw) if raw else None
        with self._lock:
            self.seen.append({"path": h.path, "headers": dict(h.headers), "payload": payload})
            answer = self.answers[min(len(self.seen), len(self.answers)) - 1]
        status, headers, body = answer(payload) if callable(answer) else answer
        if isinstance(body, (dict, list)):
            body, headers = json.dumps(body), {"Content-Type": "application/json", **headers}
        data = body.encode() if isinstance(body, str) else body
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def vllm_reply(payload: dict) -> tuple[int, dict, dict]:
    """What vLLM answers: per prompt, None then {token: {logprob, rank}} with the realised token
    (logprob -0.25·p at position p) and two better tokens 1001, 1002; choices out of order."""
    choices = []
    for i, prompt in enumerate(payload["prompt"]):
        rows: list = [None]
        for p, tok in enumerate(prompt[1:], start=1):
            rows.append(
                {
                    str(tok): {"logprob": -0.25 * p, "rank": 3, "decoded_token": "x"},
                    "1001": {"logprob": -0.01, "rank": 1, "decoded_token": "a"},
                    "1002": {"logprob": -0.02, "rank": 2, "decoded_token": "b"},
                }
            )
        choices.append({"index": i, "text": "", "prompt_logprobs": rows, "finish_reason": "length"})
    return 200, {}, {"id": "cmpl-1", "object": "text_completion", "choices": choices[::-1]}


def error(status: int, message: str, **headers: str) -> tuple[int, dict, dict]:
    return status, headers, {"error": {"message": message, "type": "BadRequestError", "code": status}}


REQUESTS = [
    TeacherRequest("a", np.array([5, 6, 7, 8], np.int32), 2),
    TeacherRequest("empty", np.array([3, 4], np.int32), 2),  # no response tokens: never sent
    TeacherRequest("b", np.array([9, 10, 11], np.int32), 1),
]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # the test servers are local
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def serve():
    made: list[Server] = []

    def start(*answers, tls=None) -> Server:
        made.append(Server(*answers, tls=tls))
        return made[-1]

    yield start
    for server in made:
        server.close()


@pytest.fixture
def teacher():
    made: list[HttpTeacher] = []

    def make(url: str, **kwargs) -> HttpTeacher:
        made.append(HttpTeacher(url, "teacher-model", api_key_env=KEY_ENV, **{**FAST, **kwargs}))
        return made[-1]

    yield make
    for t in made:
        t.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key: (cert.pem, key.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    try:
        _make_cert_with_cryptography(cert_file, key_file)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip(
                "cannot make a test certificate: neither `cryptography` nor the openssl CLI is available"
            )
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key_file), "-out", str(cert_file), "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
    return str(cert_file), str(key_file)


def _make_cert_with_cryptography(cert_file: Path, key_file: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _check_scores(scores) -> None:
    a, empty, b = scores
    np.testing.assert_allclose(a.token_logprobs, [-0.5, -0.75])
    np.testing.assert_allclose(b.token_logprobs, [-0.25, -0.5])
    for s in (a, b):
        assert s.topk_ids.tolist() == [[1001, 1002]] * len(s.token_logprobs)
        np.testing.assert_allclose(s.topk_logprobs, [[-0.01, -0.02]] * len(s.token_logprobs), rtol=1e-6)
    assert (
        empty.sample_id == "empty" and empty.token_logprobs.shape == (0,) and empty.topk_ids.shape == (0, 2)
    )


def _fails(t: HttpTeacher, kind: type[BaseException] = TeacherHTTPError) -> TeacherHTTPError:
    with pytest.raises(kind) as caught:
        t.score(REQUESTS, top_k=2)
    err = caught.value
    assert isinstance(err, TeacherHTTPError)
    assert KEY not in str(err) and KEY not in repr(err.args)
    return err


# ---------------------------------------------------------------- success and the payload
def test_success_parses_scores_and_sends_the_vllm_payload(serve, teacher):
    server = serve(vllm_reply)
    _check_scores(teacher(server.url).score(REQUESTS, top_k=2))
    (req,) = server.seen
    assert req["path"] == "/v1/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["payload"] == {
        "model": "teacher-model",
        "prompt": [[5, 6, 7, 8], [9, 10, 11]],
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": 2,
    }


def test_prompts_are_split_over_several_requests_and_the_root_url_gets_v1(serve, teacher):
    server = serve(vllm_reply)
    _check_scores(teacher(server.origin + "/", max_prompts_per_request=1).score(REQUESTS, top_k=2))
    assert [r["path"] for r in server.seen] == ["/v1/completions"] * 2
    assert [r["payload"]["prompt"] for r in server.seen] == [[[5, 6, 7, 8]], [[9, 10, 11]]]


def test_no_key_no_authorization_header(serve, teacher, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    server = serve(vllm_reply)
    teacher(server.url).score(REQUESTS, top_k=2)
    assert "Authorization" not in server.seen[0]["headers"]


# ---------------------------------------------------------------- retries
@pytest.mark.parametrize("status", [503, 500, 502, 429])
def test_a_transient_status_then_success_is_retried(serve, teacher, status):
    server = serve(error(status, "busy, try again"), vllm_reply)
    _check_scores(teacher(server.url).score(REQUESTS, top_k=2))
    assert len(server.seen) == 2


def test_retries_are_bounded_and_the_error_stays_transient(serve, teacher):
    server = serve(error(429, "rate limited", **{"Retry-After": "0"}))
    err = _fails(teacher(server.url, max_attempts=4))
    assert len(server.seen) == 4 and err.attempts == 4
    assert err.status == 429 and err.retryable
    assert "HTTP 429: rate limited" in str(err) and "gave up after 4 attempts" in str(err)
    assert classify(err, "teacher").kind is Kind.TRANSIENT


def test_retry_after_is_honoured_up_to_the_backoff_cap(serve, teacher):
    server = serve(error(503, "restarting", **{"Retry-After": "30"}), vllm_reply)
    start = time.monotonic()
    teacher(server.url, backoff_max_s=0.2).score(REQUESTS, top_k=2)
    assert 0.2 <= time.monotonic() - start < 5  # waited the cap, not 30 s


def test_timeouts_are_retried_then_reported(serve, teacher):
    def slow(payload):
        time.sleep(0.5)
        return vllm_reply(payload)

    server = serve(slow)
    err = _fails(teacher(server.url, timeout_s=0.1, max_attempts=2))
    assert "did not answer within 0.1 s" in str(err) and err.retryable and err.status is None
    assert len(server.seen) == 2 and err.attempts == 2


def test_a_refused_connection_is_retried_then_reported(serve, teacher):
    server = serve(vllm_reply)
    url = server.url
    server.close()  # nothing listens on that port any more
    err = _fails(teacher(url, max_attempts=3))
    assert "cannot reach teacher server" in str(err) and err.retryable and err.attempts == 3
    assert classify(err, "teacher").kind is Kind.TRANSIENT


def test_errors_keep_their_fields_through_pickling(serve, teacher):
    # Ray pickles an actor's exception to hand it to the driver
    err = _fails(teacher(serve(error(503, "busy")).url, max_attempts=2))
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.retryable, back.attempts, str(back)) == (503, True, 2, str(err))


# ---------------------------------------------------------------- errors that fail at once
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, f"rejected the API key \\(HTTP 401\\): check \\${KEY_ENV}"),
        (404, "HTTP 404: The model .* does not exist"),
    ],
)
def test_401_and_404_fail_at_once_as_configuration_errors(serve, teacher, status, expected):
    server = serve(error(status, "The model `teacher-model` does not exist."))
    err = _fails(teacher(server.url, max_attempts=5))
    assert len(server.seen) == 1 and err.attempts == 1
    assert err.status == status and not err.retryable
    assert re.search(expected, str(err))
    assert classify(err, "teacher").kind is Kind.FATAL


def test_a_prompt_too_long_is_a_data_error_not_retried(serve, teacher):
    server = serve(
        error(400, "This model's maximum context length is 511 tokens. However, you requested 566")
    )
    err = _fails(teacher(server.url), TeacherHTTPInputTooLong)
    assert len(server.seen) == 1 and classify(err, "teacher").kind is Kind.DATA


def test_an_html_reply_is_a_clear_error(serve, teacher):
    page = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>" + "x" * 1000 + "</body></html>"
    server = serve((200, {"Content-Type": "text/html; charset=utf-8"}, page))
    err = _fails(teacher(server.url))
    assert "an HTML page" in str(err) and "is teacher.url the API root" in str(err)
    assert "JSONDecodeError" not in repr(err) and len(str(err)) < 600
    assert len(server.seen) == 1


def test_a_body_that_is_not_json_is_a_clear_error(serve, teacher):
    server = serve((200, {"Content-Type": "application/json"}, '{"choices": [tru'))
    assert "a body that is not JSON" in str(_fails(teacher(server.url)))


@pytest.mark.parametrize(
    ("mangle", "named"),
    [
        (lambda r: [c.pop("index") for c in r["choices"]], "'index'"),
        (lambda r: r["choices"][0]["prompt_logprobs"][1].update({"5": {"rank": 1}}), "'logprob'"),
        (lambda r: r["choices"][0].update(prompt_logprobs={"oops": 1}), "prompt_logprobs is a dict"),
        (lambda r: r.update(choices="none"), "'choices' is a str"),
    ],
)
def test_a_reply_with_missing_fields_names_them(serve, teacher, mangle, named):
    def broken(payload):
        status, headers, reply = vllm_reply(payload)
        mangle(reply)
        return status, headers, reply

    err = _fails(teacher(serve(broken).url))
    assert "malformed" in str(err) and named in str(err)
    assert not isinstance(err, KeyError)


def test_a_reply_without_prompt_logprobs_says_what_the_server_lacks(serve, teacher):
    def plain(payload):
        status, headers, reply = vllm_reply(payload)
        for c in reply["choices"]:
            del c["prompt_logprobs"]
        return status, headers, reply

    assert "vLLM's extra `prompt_logprobs`" in str(_fails(teacher(serve(plain).url)))


# ---------------------------------------------------------------- the key stays home
def test_a_redirect_to_another_host_is_refused_and_the_key_never_leaves(serve, teacher):
    other = serve(vllm_reply)  # another port: another origin
    server = serve((307, {"Location": other.url + "/completions"}, ""))
    err = _fails(teacher(server.url), TeacherHTTPConfigError)
    assert f"redirect to {other.origin};" in str(err) and "not followed" in str(err)
    assert err.status == 307 and err.attempts == 1 and not err.retryable
    assert not any(KEY in json.dumps(r["headers"]) for r in other.seen)
    assert other.seen == []
    assert isinstance(err, TeacherConfigError) and classify(err, "teacher").kind is Kind.FATAL


def test_a_redirect_on_the_same_host_is_refused_too(serve, teacher):
    server = serve((301, {"Location": "/v1/completions/"}, ""))
    err = _fails(teacher(server.url), TeacherHTTPConfigError)
    assert "HTTP 301, a redirect to '/v1/completions/' on the same host" in str(err)
    assert len(server.seen) == 1


def test_an_https_to_http_redirect_is_refused(serve, teacher, cert):
    plain = serve(vllm_reply)
    secure = serve((308, {"Location": plain.url + "/completions"}, ""), tls=cert)
    err = _fails(teacher(secure.url, ca_cert=cert[0]), TeacherHTTPConfigError)
    assert "HTTP 308, a redirect to http://127.0.0.1" in str(err)
    assert plain.seen == [] and len(secure.seen) == 1


def test_an_error_body_that_echoes_the_key_is_scrubbed_and_cut(serve, teacher):
    echo = f"invalid header Authorization: Bearer {KEY} (key {KEY}) " + "y" * 5000
    server = serve(error(500, echo))
    err = _fails(teacher(server.url, max_attempts=1))
    detail = str(err).split("HTTP 500: ", 1)[1]
    assert KEY not in str(err) and "***" in detail and len(detail) <= DETAIL_CHARS


def test_scrub_hides_keys_and_authorization_values():
    assert scrub(f"got {KEY}!", KEY) == "got ***!"
    assert scrub("header bearer abc.def-ghi was bad") == "header Bearer *** was bad"
    assert scrub('{"Authorization": "Basic dXNlcjpwYXNz", "x": 1}') == '{"Authorization": "***", "x": 1}'
    assert scrub("authorization=token123\nnext") == "authorization=*** next"
    assert len(scrub("z" * 1000)) == DETAIL_CHARS


def test_plain_http_with_a_key_to_another_host_warns():
    with pytest.warns(UserWarning, match="over plain http to teacher.example.com; use https"):
        HttpTeacher("http://teacher.example.com:8000/v1", "m", api_key_env=KEY_ENV).close()


# ---------------------------------------------------------------- HTTPS with a local certificate
def test_https_with_the_ca_file_works(serve, teacher, cert):
    server = serve(vllm_reply, tls=cert)
    assert server.url.startswith("https://")
    _check_scores(teacher(server.url, ca_cert=cert[0]).score(REQUESTS, top_k=2))
    assert server.seen[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_https_with_an_untrusted_certificate_fails_at_once(serve, teacher, cert):
    server = serve(vllm_reply, tls=cert)
    err = _fails(teacher(server.url, max_attempts=3), TeacherHTTPConfigError)
    assert "TLS certificate not trusted" in str(err) and "teacher.ca_cert" in str(err)
    assert err.attempts == 1 and server.seen == []
    assert classify(err, "teacher").kind is Kind.FATAL


def test_verify_tls_false_accepts_the_certificate(serve, teacher, cert):
    server = serve(vllm_reply, tls=cert)
    _check_scores(teacher(server.url, verify_tls=False).score(REQUESTS, top_k=2))


# ---------------------------------------------------------------- configuration
def test_the_http_timeout_must_fit_in_the_hop_timeout():
    cfg = Config()
    cfg.teacher.backend, cfg.teacher.url = "http", "https://teacher:8000/v1"
    validate(cfg)  # defaults: 60 s × 3 < 300 s
    cfg.teacher.http_max_attempts = 5
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == "teacher.http_timeout_s"
    cfg.teacher.http_max_attempts = 0
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == "teacher.http_max_attempts"
