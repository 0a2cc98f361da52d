"""Workflow definitions: the models of a dagnats workflow file (JSON or YAML), and their
wire form (`to_dict`). Reading files and text is `loader`'s job, the structural rules are
`validate`'s.

Durations in every field are Go duration strings, integer nanoseconds or timedeltas.
Valid agent_loop settings given under `config` (as the reference's files do) are moved
to `loop` when a step is built.

The published schema lacks `config` on steps although real files use it (type-specific
settings such as `max_iterations` or `max_items` live there). So `to_dict` writes them
where the schema has room, and building a step reads them back from there:

- agent_loop settings go under `loop`; `budget_warn_at` / `budget_force_at`, which the
  schema's AgentLoopConfig lacks, go in `metadata` as `dagnats.loop.<key>`;
- a map step's MapConfig goes in `metadata` as `dagnats.map.max_items` /
  `dagnats.map.concurrency` (string values);
- any other `config` key goes in `metadata` as `dagnats.config.<key>` = JSON text.

Metadata keys starting with `dagnats.` are therefore reserved, and
`load_workflow(d.to_dict()) == d`. Steps of types we do not run (`respond`,
`sub_workflow`...) carry no task in the reference's files although the schema requires
one; we do not write such definitions, so that gap does not reach our output.
"""

from __future__ import annotations

import copy
import json
import math
import operator
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import WorkflowError
from . import graph
from .durations import format_duration, parse_duration

StepType = Literal[
    "normal",
    "agent_loop",
    "sub_workflow",
    "agent",
    "map",
    "sleep",
    "approval",
    "planner",
    "respond",
    "wait_for_event",
]
SUPPORTED_STEP_TYPES: frozenset[str] = frozenset({"normal", "map", "agent_loop"})
RETRY_ATTEMPTS_MAX = 100_000
MAP_ITEMS_MAX = 10_000
MAX_STEPS_LIMIT = 1_000

LOOP_KEYS = ("max_iterations", "max_duration", "loop_delay", "budget_warn_at", "budget_force_at")
MAP_KEYS = ("max_items", "concurrency")
MAP_PREFIX = "dagnats.map."
LOOP_PREFIX = "dagnats.loop."
CONFIG_PREFIX = "dagnats.config."
_GO_DURATION_MAX = timedelta(microseconds=(2**63 - 1) // 1000)


def _opt_duration(value: Any) -> Any:
    return None if value is None else _duration(value)


def _duration(value: Any) -> Any:
    try:
        return parse_duration(value)
    except WorkflowError as exc:
        raise ValueError(str(exc)) from None


_DurationCore = Annotated[
    timedelta, PlainSerializer(format_duration, return_type=str, when_used="json")
]
Duration = Annotated[_DurationCore, BeforeValidator(_duration)]
OptDuration = Annotated[_DurationCore | None, BeforeValidator(_opt_duration)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PosInt = Annotated[int, Strict(), Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryPolicy(_Model):
    """How often and how soon a failed step is retried; total attempts = max_attempts + 1."""

    max_attempts: Annotated[int, Strict(), Field(ge=0, le=RETRY_ATTEMPTS_MAX)]
    strategy: Literal["fixed", "linear", "exponential"]
    initial_delay: Duration
    max_delay: Duration = timedelta(0)
    multiplier: Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)] = 2.0

    def delay(self, attempt: int) -> timedelta:
        """Delay before the retry that follows failed attempt `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        initial = _micros(self.initial_delay)
        if self.strategy == "fixed":
            micros: float = initial
        elif self.strategy == "linear":
            micros = initial * attempt
        else:
            try:
                micros = initial * math.pow(self.multiplier, attempt - 1)
            except OverflowError:
                micros = math.inf if initial else 0
        cap = _micros(self.max_delay) if self.max_delay else _micros(_GO_DURATION_MAX)
        return timedelta(microseconds=cap if micros >= cap else round(micros))

    def to_dict(self) -> dict[str, Any]:
        """The policy as the wire writes it (durations as Go strings)."""
        out: dict[str, Any] = {
            "max_attempts": self.max_attempts,
            "strategy": self.strategy,
            "initial_delay": format_duration(self.initial_delay),
        }
        if self.max_delay:
            out["max_delay"] = format_duration(self.max_delay)
        out["multiplier"] = self.multiplier
        return out


class AgentLoopConfig(_Model):
    """Bounds of an agent_loop step: whichever of the limits fires first ends the loop."""

    max_iterations: PosInt
    max_duration: OptDuration = None
    loop_delay: OptDuration = None
    budget_warn_at: NonNegInt | None = None
    budget_force_at: NonNegInt | None = None

    def to_dict(self) -> dict[str, Any]:
        """The settings the schema's AgentLoopConfig has room for."""
        out: dict[str, Any] = {"max_iterations": self.max_iterations}
        if self.max_duration is not None:
            out["max_duration"] = format_duration(self.max_duration)
        if self.loop_delay is not None:
            out["loop_delay"] = format_duration(self.loop_delay)
        return out


class MapConfig(_Model):
    """Fan-out bounds of a map step; `concurrency` None means all instances at once."""

    max_items: Annotated[int, Strict(), Field(gt=0, le=MAP_ITEMS_MAX)] = 1000
    concurrency: PosInt | None = None


_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


class ParentCond(_Model):
    """A comparison on one top-level field of a parent step's output (used by skip_if)."""

    step_id: str
    field: str
    op: Literal["==", "!=", "<", ">", "<=", ">="]
    value: Any

    def matches(self, parent_output: Any) -> bool:
        """True when the parent's output satisfies the condition; never raises.

        As in the reference: numbers compare numerically, strings lexically, booleans
        with == and != only; a missing field, a non-object output or operands of
        different kinds (or null, lists, objects) give False.
        """
        if not isinstance(parent_output, Mapping) or self.field not in parent_output:
            return False
        left, right = parent_output[self.field], self.value
        kind = _kind(left)
        if kind is None or kind != _kind(right):
            return False
        if kind == "bool" and self.op not in ("==", "!="):
            return False
        return bool(_OPS[self.op](left, right))

    def to_dict(self) -> dict[str, Any]:
        """The condition as the wire writes it."""
        return {"step_id": self.step_id, "field": self.field, "op": self.op, "value": self.value}


class ConcurrencyLimit(_Model):
    """Workflow-level parallelism; 0 or None means unlimited."""

    max_runs: NonNegInt | None = None
    max_steps: Annotated[int, Strict(), Field(ge=0, le=MAX_STEPS_LIMIT)] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The limits that are set."""
        return {
            k: v
            for k, v in (("max_runs", self.max_runs), ("max_steps", self.max_steps))
            if v is not None
        }


class StepDef(_Model):
    """One step of a workflow."""

    id: str
    task: str | None = None
    depends_on: Annotated[list[str], BeforeValidator(lambda v: [] if v is None else v)] = Field(
        default_factory=list
    )
    type: StepType = "normal"
    timeout: OptDuration = None
    retries: Annotated[int, Strict(), Field(ge=0, le=RETRY_ATTEMPTS_MAX)] | None = None
    retry: RetryPolicy | None = None
    config: dict[str, Any] | None = None
    loop: AgentLoopConfig | None = None
    skip_if: ParentCond | None = None
    metadata: dict[str, str] | None = None
    worker_group: str | None = None
    on_failure: str | None = None
    compensate: str | None = None
    required_capabilities: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_reserved_metadata(cls, data: Any) -> Any:
        return _read_reserved_metadata(data)

    @field_validator("config", "metadata", "required_capabilities")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    @model_validator(mode="after")
    def _loop_from_config(self) -> StepDef:
        if self.type == "agent_loop" and self.loop is None and self.config:
            settings = {k: v for k, v in self.config.items() if k in LOOP_KEYS}
            if settings:
                try:
                    self.loop = AgentLoopConfig.model_validate(settings)
                except ValidationError:
                    return self
                self.config = {k: v for k, v in self.config.items() if k not in LOOP_KEYS} or None
        return self

    @property
    def loop_config(self) -> AgentLoopConfig | None:
        """The agent_loop settings, from `loop` or else from `config`; None if absent."""
        if self.loop is not None:
            return self.loop
        if self.type != "agent_loop" or not self.config:
            return None
        settings = {k: v for k, v in self.config.items() if k in LOOP_KEYS}
        try:
            return AgentLoopConfig.model_validate(settings)
        except ValidationError:
            return None

    @property
    def map_config(self) -> MapConfig:
        """The map settings from `config` (defaults when absent or not a map step)."""
        if self.type != "map" or not self.config:
            return MapConfig()
        settings = {k: v for k, v in self.config.items() if k in MAP_KEYS}
        try:
            return MapConfig.model_validate(settings)
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise WorkflowError(f"step '{self.id}': field 'config': {why}") from None

    def to_dict(self) -> dict[str, Any]:
        """The step as the published schema allows it: settings without a place go in
        metadata (see the module's docstring)."""
        out: dict[str, Any] = {"id": self.id}
        if self.task is not None:
            out["task"] = self.task
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        out["type"] = self.type
        if self.timeout is not None:
            out["timeout"] = format_duration(self.timeout)
        if self.retries is not None:
            out["retries"] = self.retries
        if self.retry is not None:
            out["retry"] = self.retry.to_dict()
        meta = dict(self.metadata or {})
        config = dict(self.config or {})
        loop = self.loop_config if self.type == "agent_loop" else self.loop
        if loop is not None:
            out["loop"] = loop.to_dict()
            for key in ("budget_warn_at", "budget_force_at"):
                if getattr(loop, key) is not None:
                    meta[LOOP_PREFIX + key] = str(getattr(loop, key))
            if self.loop is None:
                config = {k: v for k, v in config.items() if k not in LOOP_KEYS}
        if self.type == "map":
            for key in MAP_KEYS:
                if key in config:
                    meta[MAP_PREFIX + key] = json.dumps(config.pop(key))
        for key, value in config.items():
            meta[CONFIG_PREFIX + key] = json.dumps(value, ensure_ascii=False)
        if self.skip_if is not None:
            out["skip_if"] = copy.deepcopy(self.skip_if.to_dict())
        if meta:
            out["metadata"] = meta
        for key in ("worker_group", "on_failure", "compensate"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.required_capabilities:
            out["required_capabilities"] = list(self.required_capabilities)
        return out


class WorkflowDef(_Model):
    """A workflow: named steps and the dependencies between them."""

    name: str
    version: str = "1.0"
    steps: list[StepDef]
    default_retry: RetryPolicy | None = None
    concurrency: ConcurrencyLimit | None = None
    timeout: OptDuration = None
    input_schema: Any = None
    output_schema: Any = None
    triggers: list[dict[str, Any]] | None = None
    # Worker affinity, the reference's WorkflowDef.Sticky (absent from its published schema):
    # after the first completed step, a run's tasks go to the worker that completed it.
    sticky: Literal["soft", "hard"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_schema_ref(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k != "$schema"}
            version = data.get("version")
            if isinstance(version, int | float) and not isinstance(version, bool):
                data["version"] = str(version)
        return data

    @field_validator("triggers")
    @classmethod
    def _no_triggers_is_none(cls, value: Any) -> Any:
        return value or None

    @property
    def step_ids(self) -> list[str]:
        """Step ids in definition order."""
        return [s.id for s in self.steps]

    def step(self, step_id: str) -> StepDef:
        """The step with this id; WorkflowError when there is none."""
        for s in self.steps:
            if s.id == step_id:
                return s
        known = ", ".join(self.step_ids)
        raise WorkflowError(f"workflow '{self.name}': no step '{step_id}' (steps: {known})")

    def retry_policy(self, step_id: str) -> RetryPolicy | None:
        """Effective retry policy: step `retry` > `default_retry` > step `retries` > None."""
        step = self.step(step_id)
        if step.retry is not None:
            return step.retry
        if self.default_retry is not None:
            return self.default_retry
        if step.retries:
            five = timedelta(seconds=5)
            return RetryPolicy(
                max_attempts=step.retries, strategy="fixed", initial_delay=five, max_delay=five
            )
        return None

    @property
    def handler_steps(self) -> list[str]:
        """Steps named by another step's `on_failure` or `compensate`; they run only then."""
        seen: dict[str, None] = {}
        for s in self.steps:
            for target in (s.on_failure, s.compensate):
                if target:
                    seen[target] = None
        return list(seen)

    def dependents(self, step_id: str) -> list[str]:
        """Steps that list `step_id` in their depends_on, in definition order."""
        self.step(step_id)
        return [s.id for s in self.steps if step_id in s.depends_on]

    @property
    def roots(self) -> list[str]:
        """Steps with no dependencies that start a run (handler steps excluded)."""
        handlers = set(self.handler_steps)
        return [s.id for s in self.steps if not s.depends_on and s.id not in handlers]

    @property
    def terminal_steps(self) -> list[str]:
        """Steps no other step depends on, excluding on_failure/compensate handlers."""
        needed = {d for s in self.steps for d in s.depends_on}
        handlers = set(self.handler_steps)
        return [s.id for s in self.steps if s.id not in needed and s.id not in handlers]

    @property
    def topological_order(self) -> list[str]:
        """All step ids, dependencies first, ties in definition order; WorkflowError naming
        each cycle (a definition `load_workflow` checked has none)."""
        return graph.topological_order(self.name, self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The definition as a dict that validates against the published workflow schema."""
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "steps": [s.to_dict() for s in self.steps],
        }
        if self.default_retry is not None:
            out["default_retry"] = self.default_retry.to_dict()
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency.to_dict()
        if self.timeout is not None:
            out["timeout"] = format_duration(self.timeout)
        for key in ("input_schema", "output_schema"):
            if getattr(self, key) is not None:
                out[key] = copy.deepcopy(getattr(self, key))
        if self.triggers:
            out["triggers"] = copy.deepcopy(self.triggers)
        if self.sticky:  # the reference's field; its published schema does not list it yet
            out["sticky"] = self.sticky
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict()` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def _micros(td: timedelta) -> int:
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _read_reserved_metadata(data: Any) -> Any:
    """Move `dagnats.map.*`, `dagnats.config.*` and `dagnats.loop.*` metadata of a raw step
    back into `config` and `loop` (explicit `config` / `loop` values win)."""
    meta = data.get("metadata") if isinstance(data, Mapping) else None
    if not isinstance(meta, Mapping) or not any(
        isinstance(k, str) and k.startswith("dagnats.") for k in meta
    ):
        return data
    config: dict[str, Any] = {}
    loop: dict[str, Any] = {}
    rest: dict[Any, Any] = {}
    targets = ((MAP_PREFIX, config), (CONFIG_PREFIX, config), (LOOP_PREFIX, loop))
    for key, text in meta.items():
        for prefix, target in targets:
            if isinstance(key, str) and key.startswith(prefix):
                target[key[len(prefix) :]] = _decode(text)
                break
        else:
            rest[key] = text
    data = dict(data)
    data["metadata"] = rest or None
    if config and isinstance(data.get("config") or {}, Mapping):
        data["config"] = {**config, **(data.get("config") or {})}
    old_loop = data.get("loop")
    if isinstance(old_loop, AgentLoopConfig):
        old_loop = old_loop.model_dump(exclude_none=True)
    if loop and isinstance(old_loop or {}, Mapping):
        data["loop"] = {**loop, **(old_loop or {})}
    return data


def _decode(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
