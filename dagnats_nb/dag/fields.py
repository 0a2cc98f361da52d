"""The typed pieces of a workflow file, in the JSON shapes of the reference's (Go) `dag`
package: durations, and the small structs this engine accepts and keeps but does not
enforce yet.

Durations are read as Go duration strings, integer nanoseconds or timedeltas and written
(`model_dump(mode="json")`, hence every `to_dict`) as integer nanoseconds, Go's
`time.Duration` JSON form.

Accepted, kept and written back, not enforced yet (a definition using them runs as if they
were absent): a step's `rate_limit` / `keyed_rate_limit` (Go `dag.RateLimit`,
`dag.KeyedRateLimit`), a workflow's `priority` (`dag.PriorityConfig`), `cancel_on`
(`[]dag.CancelOn`) and `singleton` (`dag.SingletonConfig`). Their structural rules are the
reference's, so what we accept the Go engine accepts too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, Strict

from ..errors import WorkflowError
from .durations import parse_duration, to_nanoseconds

PRIORITY_OFFSET_MAX = 600  # Go's clampOffset / validatePriority bound, in seconds


def _duration(value: Any) -> timedelta:
    try:
        return parse_duration(value)
    except WorkflowError as exc:
        raise ValueError(str(exc)) from None


def _zero_is_none(value: Any) -> timedelta | None:
    """Go writes an unset duration as 0 (or leaves it out): both mean "none" here."""
    return None if value is None else (_duration(value) or None)


def _positive(value: Any) -> timedelta:
    td = _duration(value)
    if not td:
        raise ValueError(f"must be > 0, got {to_nanoseconds(td)}")
    return td


def _ns(td: timedelta | None) -> int | None:
    return None if td is None else to_nanoseconds(td)


_AS_NS = PlainSerializer(_ns, return_type=int | None, when_used="json")
Duration = Annotated[timedelta, PlainValidator(_duration), _AS_NS]
"""A duration >= 0."""
OptDuration = Annotated[timedelta | None, PlainValidator(_zero_is_none), _AS_NS]
"""A duration where 0 and null mean none (Go's zero `time.Duration`)."""
PosDuration = Annotated[timedelta, PlainValidator(_positive), _AS_NS]
"""A duration > 0."""
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PosInt = Annotated[int, Strict(), Field(gt=0)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Offset = Annotated[int, Strict(), Field(ge=-PRIORITY_OFFSET_MAX, le=PRIORITY_OFFSET_MAX)]


class GoModel(BaseModel):
    """A struct of a workflow file: unknown fields are refused, `to_dict` is its JSON form."""

    model_config = ConfigDict(extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as Go reads them (durations in nanoseconds)."""
        return self.model_dump(mode="json", exclude_none=True)


class RateLimit(GoModel):
    """Go `dag.RateLimit`: at most `limit` tasks of the step's type per `period`.
    Accepted and kept, not enforced yet."""

    limit: PosInt
    period: PosDuration


class KeyedRateLimit(GoModel):
    """Go `dag.KeyedRateLimit`: `limit` per `period` for each value of the input's dot-path
    `key`, a task costing `units`. Accepted and kept, not enforced yet."""

    key: NonEmptyStr
    limit: PosInt
    period: PosDuration
    units: PosInt


class PriorityConfig(GoModel):
    """Go `dag.PriorityConfig`: a run's queue offset in seconds (-600..600) from the value at
    the input's dot-path `key`. Accepted and kept, not enforced yet."""

    key: NonEmptyStr
    rules: Annotated[dict[str, Offset], Field(min_length=1, max_length=20)]
    default_offset: Offset = 0

    def to_dict(self) -> dict[str, Any]:
        """Every field, as Go writes them (none is omitempty)."""
        return self.model_dump(mode="json")


class Match(GoModel):
    """Go `dag.Match`: an event field (`left`, a dot-path) compared with `op` ("eq") to
    `right` (a dot-path into the run's input or outputs)."""

    left: str = ""
    op: str = ""
    right: str = ""


class CancelOn(GoModel):
    """Go `dag.CancelOn`: an event that cancels a running run. Accepted and kept, not
    enforced yet."""

    event: NonEmptyStr
    match: Match | None = None
    timeout: OptDuration = None


class SingletonConfig(GoModel):
    """Go `dag.SingletonConfig`: one run at a time (per `key`, a dot-path into the input);
    a duplicate is skipped or cancels the older run. Accepted and kept, not enforced yet."""

    mode: Literal["skip", "cancel"]
    key: str | None = None


def debounce_in_ns(trigger: Any) -> Any:
    """A trigger (a dict, as written) with its debounce `period` / `timeout` in nanoseconds,
    Go's `DebounceConfig` form, where they are durations (others are left to `validate`)."""
    debounce = trigger.get("debounce") if isinstance(trigger, Mapping) else None
    if not isinstance(debounce, Mapping):
        return trigger
    debounce = dict(debounce)
    for key in ("period", "timeout"):
        if key in debounce:
            with contextlib.suppress(WorkflowError):
                debounce[key] = to_nanoseconds(parse_duration(debounce[key]))
    return {**trigger, "debounce": debounce}
