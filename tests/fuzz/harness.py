"""What every fuzz target shares: its time budget, and the check that an input ended well.

A target is a Hypothesis test decorated with :func:`target`. Two ways to run it:

* the CI pass (``make test-fuzz``, the default): a fixed number of examples
  per target, derandomized and without an example database, so that every run
  tries the same inputs and a failure reproduces on any machine;
* the fuzzing run (``make fuzz``, ``FUZZ_SECONDS=N`` in the environment):
  rounds of randomly seeded examples, one after the other, until the target has
  run for N seconds (the round in progress is finished, so a target may
  overrun by one round). Failures are saved in Hypothesis' example database
  (``.hypothesis/``) and replayed first on the next run.

:func:`ended_well` is the one assertion every target makes: the input ended in
the parser's own error type or in a value, and an error message quotes nothing
key- or address-shaped from the input.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from hypothesis import HealthCheck, currently_in_test_context, event, settings

from nodeagent.privacy.logs import redact

F = TypeVar("F", bound=Callable[..., Any])

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS") or 0)

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "print_blob": True,
}
_CI = settings(derandomize=True, database=None, **_COMMON)
_FUZZ = settings(**_COMMON)


def target(ci_examples: int, *, round_examples: int | None = None) -> Callable[[F], F]:
    """Put above ``@given``: ``ci_examples`` in the CI pass, rounds until FUZZ_SECONDS otherwise.

    ``round_examples`` (default 1000, at least ``ci_examples``) is how many examples
    one round of the fuzzing run tries; a slow target wants smaller rounds.
    """

    def wrap(test: F) -> F:
        if FUZZ_SECONDS <= 0:
            return settings(_CI, max_examples=ci_examples)(test)  # type: ignore[no-any-return]
        one_round = settings(_FUZZ, max_examples=round_examples or max(1000, ci_examples))(test)

        @functools.wraps(one_round)
        def rounds(*args: Any, **kwargs: Any) -> None:
            end = time.monotonic() + FUZZ_SECONDS
            done = 0
            while done == 0 or time.monotonic() < end:
                one_round(*args, **kwargs)
                done += 1

        return rounds  # type: ignore[return-value]

    return wrap


# --- the outcome of one input ---------------------------------------------------

# Runs that could be (part of) a key: base64 or hex text of 16 characters or more
# with a digit or a base64 symbol in it (so that words such as UnicodeDecodeError,
# which the messages may hold by themselves, do not count).
_KEYISH = re.compile(r"[A-Za-z0-9+/=_-]{16,}")
# Runs that could be an address: 8 characters or more of digits, hex, dots and colons.
_ADDRISH = re.compile(r"[0-9A-Fa-f.:]{8,}(?:/\d{1,3})?")


def sensitive_tokens(source: str | bytes) -> set[str]:
    """The key- and address-shaped substrings of an input that no error message may hold."""
    text = source.decode("latin-1") if isinstance(source, bytes | bytearray) else source
    found = {t for t in _KEYISH.findall(text) if re.search(r"[0-9+/=]", t)}
    for t in _ADDRISH.findall(text):
        candidate = t.split("/", 1)[0]
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            continue
        found.add(candidate)
    return found


def assert_quotes_nothing(message: str, source: str | bytes, extra: Iterable[str] = ()) -> None:
    """``message`` holds nothing shaped like a key or an address, and no such part of ``source``."""
    assert redact(message) == message, f"key- or address-shaped text in {message!r}"
    for token in sensitive_tokens(source) | {t for t in extra if len(t) >= 8}:
        assert token not in message, f"input text {token!r} quoted in {message!r}"


def ended_well(
    call: Callable[[], Any],
    errors: type[BaseException] | tuple[type[BaseException], ...],
    *,
    source: str | bytes | None = None,
    secrets: Iterable[str] = (),
) -> Any:
    """``call()``'s value, or the exception of one of the types ``errors`` that it raised.

    Any other exception propagates, and so fails the target. With ``source``
    (the input) the message of a raised error must quote nothing from it that
    looks like a key or an address, nor any of ``secrets``.
    """
    try:
        value = call()
    except errors as e:
        if source is not None:
            assert_quotes_nothing(str(e), source, secrets)
        _event(f"{type(e).__name__}: {re.sub(r'[0-9]+', 'N', str(e))[:80]}")
        return e
    _event(f"value: {type(value).__name__}")
    return value


def _event(what: str) -> None:
    # What ended the inputs, for --hypothesis-show-statistics (positions left out).
    if currently_in_test_context():
        event(what)
