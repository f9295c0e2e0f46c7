"""The failure classifier and the retry/stop decisions (framework/actors/failures.py): pure, no Ray cluster."""

from __future__ import annotations

import jinja2
import pytest

from framework.actors.failures import (
    Attempts,
    Kind,
    RetryPolicy,
    RunStopped,
    Supervisor,
    classify,
    first_line,
    unwrap,
)
from framework.data.chat import PromptTooLong
from framework.data.prompts import DataError
from framework.teacher.base import TeacherConfigError, TeacherInputTooLong, check_request, check_top_k
from framework.teacher.http_teacher import TeacherHTTPError, TeacherHTTPInputTooLong
from framework.types import TeacherRequest


def _ray_wrapped(cause: BaseException, function: str = "TeacherWorker.score") -> BaseException:
    """What ``ray.get`` raises for an exception inside an actor task (no cluster needed to build it)."""
    from ray.exceptions import RayTaskError

    return RayTaskError(
        function, "Traceback ...", cause, proctitle="ray::x", pid=1, ip="127.0.0.1"
    ).as_instanceof_cause()


def test_unwrap_reaches_the_exception_the_actor_raised_through_nested_task_errors():
    original = ValueError("bad input")
    twice = _ray_wrapped(_ray_wrapped(original), "MappingWorker.finish")
    assert unwrap(twice) is original
    assert unwrap(original) is original


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PromptTooLong("prompt has 600 tokens > data.max_prompt_tokens=512"), "prompt_too_long"),
        (TeacherInputTooLong("TeacherRequest 'p#0' has 565 tokens; the teacher accepts at most 511"),
         "teacher_input_too_long"),
        (DataError("the conversation has no non-empty user message"), "data_error"),
        (TeacherHTTPInputTooLong("HTTP 400: This model's maximum context length is 511 tokens"),
         "teacher_input_too_long"),
    ],
)  # fmt: skip
def test_data_errors_are_classified_as_data_with_a_reason_key(error, reason):
    failure = classify(_ray_wrapped(error), "teacher")
    assert failure.kind is Kind.DATA
    assert failure.reason == reason
    assert failure.error is error


def test_the_teacher_length_check_raises_a_data_error_naming_the_sample():
    import numpy as np

    request = TeacherRequest("p7#1", np.arange(565, dtype=np.int32), 100)
    with pytest.raises(TeacherInputTooLong, match=r"565 tokens.*at most 510") as caught:
        check_request(request, 510)
    assert caught.value.sample_ids == ("p7#1",)
    assert isinstance(caught.value, ValueError)  # callers that caught ValueError still do
    with pytest.raises(TeacherConfigError):
        check_top_k(30, 20)
    assert classify(TeacherConfigError("top_k=30 exceeds max_logprobs=20"), "teacher").kind is Kind.FATAL


def test_a_template_that_rejects_one_conversation_is_data_a_broken_template_is_not():
    rejected = jinja2.exceptions.TemplateError("Conversation roles must alternate user/assistant")
    assert classify(_ray_wrapped(rejected), "mapping").kind is Kind.DATA
    broken = jinja2.exceptions.TemplateSyntaxError("unexpected '}'", lineno=1)
    assert classify(broken, "mapping").kind is Kind.SUSPECT


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TeacherHTTPError("rejected the API key (HTTP 401)", 401), Kind.FATAL),
        (TeacherHTTPError("HTTP 404: The model `qwen-typo` does not exist.", 404), Kind.FATAL),
        (TeacherHTTPError("HTTP 503: overloaded", 503, retryable=True), Kind.TRANSIENT),
        (TeacherHTTPError("HTTP 429: slow down", 429), Kind.TRANSIENT),
        (TeacherHTTPError("cannot reach teacher server: Connection refused", retryable=True), Kind.TRANSIENT),
        (TeacherHTTPError("teacher server returned 3 choices for 4 prompts"), Kind.SUSPECT),
        (ConnectionResetError("peer reset"), Kind.TRANSIENT),
        (KeyError("logprob"), Kind.SUSPECT),
    ],
)  # fmt: skip
def test_http_and_other_errors(error, kind):
    assert classify(_ray_wrapped(error), "teacher").kind is kind


def test_ray_deaths_and_dead_engines_are_dead():
    from ray.exceptions import ActorDiedError, ObjectLostError

    assert classify(ActorDiedError(), "teacher").kind is Kind.DEAD
    assert classify(ObjectLostError("00ff", "owner", ""), "rollout").kind is Kind.DEAD
    EngineDeadError = type("EngineDeadError", (RuntimeError,), {})  # vLLM's, matched by name
    failure = classify(_ray_wrapped(EngineDeadError("EngineCore encountered an issue")), "teacher")
    assert failure.kind is Kind.DEAD and failure.engine_died


def test_first_line_keeps_type_and_first_message_line():
    assert first_line(ValueError("\n  boom\nsecond")) == "ValueError: boom"
    assert len(first_line(ValueError("x" * 2000))) == 500


def test_backoff_is_exponential_and_capped():
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    assert [policy.delay(k) for k in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_the_same_unknown_error_repeats_times_in_a_row_stops_with_the_original_text():
    lines: list[str] = []
    sup = Supervisor(RetryPolicy(repeats=3), lines.append)
    attempts = Attempts()
    error = RuntimeError("the model 'qwen-typo' is not served here")
    sup.retry(classify(error, "teacher"), attempts)
    sup.retry(classify(error, "teacher"), attempts)
    with pytest.raises(RunStopped, match=r"teacher failed the same way 3 times.*qwen-typo"):
        sup.retry(classify(error, "teacher"), attempts)
    assert len([x for x in lines if "retrying" in x]) == 1  # once per distinct message
    assert "STOPPING" in lines[-1] and "qwen-typo" in lines[-1]


def test_a_success_in_between_breaks_the_stage_streak_but_not_a_units_own():
    sup = Supervisor(RetryPolicy(repeats=2), lambda _: None)
    error = RuntimeError("flaky")
    sup.retry(classify(error, "mapping"), Attempts())
    sup.succeeded("mapping")
    sup.retry(classify(error, "mapping"), Attempts())  # another unit, streak broken: no stop
    sup.succeeded("mapping")
    unit = Attempts()
    sup.retry(classify(error, "mapping"), unit)
    sup.succeeded("mapping")
    with pytest.raises(RunStopped):
        sup.retry(classify(error, "mapping"), unit)  # the same unit twice in a row


def test_transient_errors_are_not_taken_for_deterministic_but_the_budget_bounds_them():
    sup = Supervisor(RetryPolicy(repeats=2, budget=4), lambda _: None)
    unit = Attempts()
    error = TeacherHTTPError("HTTP 503: overloaded", 503, retryable=True)
    delays = [sup.retry(classify(error, "teacher"), unit) for _ in range(4)]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    with pytest.raises(RunStopped, match=r"still failing after 4 retries.*503"):
        sup.retry(classify(error, "teacher"), unit)


def test_a_configuration_error_stops_at_once():
    sup = Supervisor(RetryPolicy(), lambda _: None)
    with pytest.raises(RunStopped, match=r"configuration error.*HTTP 401"):
        sup.retry(classify(TeacherHTTPError("rejected the API key (HTTP 401)", 401), "teacher"), Attempts())


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "This model's maximum context length is 511 tokens. However, you requested 566 tokens", Kind.DATA),
        (400, "The decoder prompt (length 566) is longer than the maximum model length of 511.", Kind.DATA),
        (404, "The model `qwen-typo` does not exist.", Kind.FATAL),
        (503, "Service Unavailable", Kind.TRANSIENT),
        (400, "prompt_logprobs must be a non-negative integer", Kind.SUSPECT),
    ],
)  # fmt: skip
def test_the_http_teacher_types_its_errors_from_the_server_answer(status, message, kind):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import numpy as np

    from framework.teacher.http_teacher import HttpTeacher

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"error": {"message": message}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the test output clean
            return None

    server = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        teacher = HttpTeacher(f"http://127.0.0.1:{server.server_port}", "m", api_key_env=None, timeout_s=5)
        with pytest.raises(TeacherHTTPError) as caught:
            teacher.score([TeacherRequest("p#0", np.arange(8, dtype=np.int32), 4)], top_k=0)
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.status == status
    failure = classify(_ray_wrapped(caught.value), "teacher")
    assert failure.kind is kind
    assert message[:20] in failure.text
