"""What to do when a stage fails: classify the original exception, then skip, retry, replace or stop.

Pure Python (no Ray import): the driver hands over whatever ``ray.get`` raised and :func:`unwrap`
digs out the exception the actor itself raised (a ``RayTaskError`` carries it as ``.cause``).

Four kinds of failure, four answers:

- ``DATA``: one sample the stage cannot take (a ``DataError`` such as a prompt longer than the
  teacher's context, or a chat template that rejects one conversation). The sample is skipped and
  counted; the rest of the batch goes on. The driver finds the culprit by halving the failed unit.
- ``DEAD``: the actor process (or the engine inside it) is gone. It is replaced, as before, counted
  against ``trainer.max_restarts``.
- ``TRANSIENT``: a fault that may clear by itself (an HTTP 503 or 429, a refused connection, a
  timeout). Retried after an exponential backoff, at most ``RetryPolicy.budget`` times per unit.
- ``FATAL``: a configuration error that no retry can fix (HTTP 401/403/404: wrong key, URL or model
  name; a tokenizer without a chat template). The run stops at once.

Anything else (``SUSPECT``) is retried like a transient fault, but the same error from a live actor
``RetryPolicy.repeats`` times in a row is taken for a deterministic one (a code or configuration
error) and stops the run, with the original text and the stage in the message.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from framework.config import ConfigError
from framework.data.prompts import DataError


class Kind(enum.Enum):
    DATA = "data"
    DEAD = "dead"
    TRANSIENT = "transient"
    FATAL = "fatal"
    SUSPECT = "unclassified"


class RunStopped(RuntimeError):
    """A stage failed in a way that retrying or replacing actors cannot fix; the run stops."""


# Ray's errors for a process, node or object that is gone (matched by name: no Ray import here).
_RAY_DEATHS = {
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
    "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError", "ObjectFetchTimedOutError",
    "ObjectReconstructionFailedError", "ObjectFreedError", "OutOfMemoryError",
}  # fmt: skip
# An engine that died inside a live actor (vLLM's engine-core process): the actor must be replaced.
_ENGINE_DEATHS = {"EngineDeadError"}
# Configuration errors raised by this package: the same on every try.
_CONFIG_ERRORS = {
    "ConfigError",
    "TeacherConfigError",
    "MissingChatTemplateError",
    "UnsupportedTokenizerError",
}
# HTTP statuses that no retry changes: a rejected key, a wrong URL or an unknown model name.
PERMANENT_HTTP = {401, 403, 404}
# HTTP statuses worth retrying: timeouts, rate limits, a server restarting or overloaded.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def unwrap(exc: BaseException) -> BaseException:
    """The exception the actor raised: ``RayTaskError`` (and its ``RayTaskError(X)`` twins) keep it
    in ``.cause``, nested once per task hop it travelled through."""
    seen = 0
    while seen < 32 and any(c.__name__ == "RayTaskError" for c in type(exc).__mro__):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc, seen = cause, seen + 1
    return exc


_CONFIG_TEXT = re.compile(r"ConfigError: config error at `([^`]+)`: (.*?)\. Fix: ([^\n]*?)\.?$", re.M)


def config_error_in(exc: BaseException) -> ConfigError | None:
    """The ``ConfigError`` an actor's constructor raised, rebuilt from Ray's ``ActorDiedError`` (which
    keeps only the text of a creation task's exception), else None."""
    match = _CONFIG_TEXT.search(str(getattr(exc, "error_msg", "") or exc))
    return ConfigError(*match.groups()) if match else None


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _data_reason(err: DataError) -> str:
    """The counter key of a data error: its family, i.e. the class right under ``DataError`` (the
    HTTP teacher's too-long error counts with the vLLM teacher's)."""
    mro = type(err).__mro__
    family = mro[mro.index(DataError) - 1] if mro.index(DataError) > 0 else DataError
    return _snake(family.__name__)


def first_line(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line (the message's first non-empty line), at most ``limit`` characters."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Failure:
    kind: Kind
    stage: str  # "rollout", "generator", "mapping", "teacher"
    error: BaseException  # as the actor raised it (unwrapped)
    reason: str  # short snake-case key: a data error's counter is ``skipped_<reason>``

    @property
    def text(self) -> str:
        return first_line(self.error)

    @property
    def signature(self) -> tuple[str, str, str]:
        """What "the same failure" means: stage, type, and the message with its numbers blanked."""
        return self.stage, type(self.error).__name__, re.sub(r"\d+", "#", str(self.error))[:500]

    @property
    def engine_died(self) -> bool:
        """DEAD although the actor answers pings: the engine inside it is gone."""
        return bool(_names(self.error) & _ENGINE_DEATHS)


def classify(exc: BaseException, stage: str) -> Failure:
    """Classify what ``ray.get`` raised (or the bare exception) for a unit of work of ``stage``."""
    err = unwrap(exc)
    names = _names(err)
    module = type(err).__module__ or ""
    if isinstance(err, DataError):
        return Failure(Kind.DATA, stage, err, _data_reason(err))
    if type(err).__name__ == "TemplateError" and module.startswith("jinja2"):
        # a chat template's raise_exception(...): it rejects this conversation (not a broken template,
        # which raises TemplateSyntaxError / UndefinedError for every prompt)
        return Failure(Kind.DATA, stage, err, f"{stage}_chat_template_rejected")
    if (names & _RAY_DEATHS and module.startswith("ray")) or names & _ENGINE_DEATHS:
        return Failure(Kind.DEAD, stage, err, "dead")
    status = getattr(err, "status", None)
    if names & _CONFIG_ERRORS or (isinstance(status, int) and status in PERMANENT_HTTP):
        return Failure(Kind.FATAL, stage, err, "config")
    if (
        getattr(err, "retryable", False) is True
        or (isinstance(status, int) and status in TRANSIENT_HTTP)
        or isinstance(err, (TimeoutError, ConnectionError))
    ):
        return Failure(Kind.TRANSIENT, stage, err, "transient")
    return Failure(Kind.SUSPECT, stage, err, "unknown")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying. Module constants rather than config keys: they bound a fault, they are not
    a tuning knob (a transient outage longer than base·2^budget capped at ``cap_s``, ~2 min here, is
    not transient)."""

    base_s: float = 0.5  # first backoff
    cap_s: float = 30.0  # longest backoff
    budget: int = 8  # retries of one unit of work (a hop, an engine's stream) before the run stops
    repeats: int = 3  # the same non-data failure this many times in a row: deterministic, stop
    max_empty_batches: int = 3  # batches in a row whose every sample was skipped: stop

    def delay(self, attempt: int) -> float:
        """Backoff before retry number ``attempt`` (1, 2, ...)."""
        return min(self.cap_s, self.base_s * 2 ** max(0, attempt - 1))


@dataclass
class Attempts:
    """The retry history of one unit of work (a hop, or one engine's stream of a batch)."""

    count: int = 0  # retries so far
    last: tuple[str, str, str] | None = None  # signature of the last failure
    streak: int = 0  # how many times in a row it failed with that signature


@dataclass
class Supervisor:
    """Decides retry or stop for non-data, non-death failures, and reports each distinct message once."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    emit: Callable[[str], None] = print
    streaks: dict[str, tuple[tuple[str, str, str], int]] = field(default_factory=dict)  # per stage
    said: set[str] = field(default_factory=set)

    def once(self, key: str, line: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.emit(line)

    def succeeded(self, *stages: str) -> None:
        """Work of these stages went through: their runs of identical failures are broken."""
        for stage in stages:
            self.streaks.pop(stage, None)

    def stop(self, failure: Failure, why: str) -> RunStopped:
        line = f"[tokenbridge] STOPPING: {failure.stage} {why}: {failure.text}"
        self.emit(line)
        return RunStopped(line.removeprefix("[tokenbridge] STOPPING: "))

    def retry(self, failure: Failure, attempts: Attempts) -> float:
        """Record one more failure of a unit; return the backoff before its retry, or raise RunStopped."""
        if failure.kind is Kind.FATAL:
            raise self.stop(failure, "failed with a configuration error that no retry can fix")
        sig = failure.signature
        attempts.streak = attempts.streak + 1 if attempts.last == sig else 1
        attempts.last = sig
        last, run = self.streaks.get(failure.stage, (None, 0))
        run = run + 1 if last == sig else 1
        self.streaks[failure.stage] = (sig, run)
        if failure.kind is Kind.SUSPECT and max(run, attempts.streak) >= self.policy.repeats:
            raise self.stop(
                failure,
                f"failed the same way {max(run, attempts.streak)} times in a row from a live actor "
                "(a configuration or code error, not a transient fault)",
            )
        if attempts.count >= self.policy.budget:
            raise self.stop(failure, f"still failing after {attempts.count} retries with backoff")
        attempts.count += 1
        delay = self.policy.delay(attempts.count)
        self.once(
            f"retry:{sig}",
            f"[tokenbridge] {failure.stage} failed ({failure.kind.value}): {failure.text}; retrying with "
            f"backoff ({delay:.1f} s first, at most {self.policy.budget} retries)",
        )
        return delay

    def skipped(self, failure: Failure, samples: int, total: int) -> None:
        """Report a data error once per reason (the counter carries the number)."""
        self.once(
            f"skip:{failure.reason}",
            f"[tokenbridge] skipping samples the {failure.stage} stage cannot take ({failure.text}); "
            f"counted in faults/skipped_{failure.reason} (now {total}, +{samples})",
        )
