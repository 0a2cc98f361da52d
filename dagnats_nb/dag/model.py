"""Workflow definitions: the models of a dagnats workflow file (JSON or YAML), and their
wire form (`to_dict`), which is the Go engine's `dag.WorkflowDef` JSON. Reading files and
text is `loader`'s job, the structural rules are `validate`'s.

Written as Go writes and reads it (Go `dag/types.go`, `retry.go`, `config.go`):

- every duration as integer nanoseconds (Go's `time.Duration`); read also as Go duration
  strings ("1h30m") or timedeltas, and 0 in a timeout means none, as in Go;
- type-specific settings in the step's `config`: agent_loop `max_iterations`,
  `max_duration`, `loop_delay`, `budget_warn_at`, `budget_force_at` (Go's AgentLoopConfig),
  map `max_items` (Go's MapConfig; always written, Go requires it) and our `concurrency`
  (Go ignores unknown config keys), any other key as given;
- `aux_steps` names every on_failure / compensate target, as Go's builder writes it: Go runs
  a step not in it as an ordinary DAG step, we never do.

Read as well, from files written before (`read both forms`): agent_loop settings under
`loop`, and settings kept in reserved metadata as `dagnats.map.<key>`,
`dagnats.loop.<key>` and `dagnats.config.<key>` (JSON text). On a model, agent_loop
settings are in `loop` and the rest of `config` in `config`; `load_workflow(d.to_dict())
== d`, and durations keep their exact nanoseconds.

Fields of Go's WorkflowDef / StepDef that the engine does not enforce yet are accepted,
kept and written back: see `fields` (rate limits, priority, cancel_on, singleton) and the
fields' comments below.
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
    BeforeValidator,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import WorkflowError
from . import graph
from .durations import parse_duration, to_nanoseconds
from .fields import CancelOn as CancelOn
from .fields import Duration, GoModel, NonNegInt, OptDuration, PosInt, debounce_in_ns
from .fields import KeyedRateLimit as KeyedRateLimit
from .fields import PriorityConfig as PriorityConfig
from .fields import RateLimit as RateLimit
from .fields import SingletonConfig as SingletonConfig
from .oldform import read_reserved_metadata

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
SUPPORTED_STEP_TYPES: frozenset[str] = frozenset(
    {
        "normal",
        "map",
        "agent_loop",
        "sleep",
        "wait_for_event",
        "approval",
        "sub_workflow",
        "agent",
        "planner",
        "respond",
    }
)
RETRY_ATTEMPTS_MAX = 100_000
MAP_ITEMS_MAX = 10_000
MAP_ITEMS_DEFAULT = 1000
MAX_STEPS_LIMIT = 1_000
TASK_CONCURRENCY_MAX = 1_000
CANCEL_ON_MAX = 5

LOOP_KEYS = ("max_iterations", "max_duration", "loop_delay", "budget_warn_at", "budget_force_at")
MAP_KEYS = ("max_items", "concurrency")
_GO_DURATION_MAX = timedelta(microseconds=(2**63 - 1) // 1000)


# Durations in a step type's `config`, kept as Go reads them: integer nanoseconds (Go
# refuses "5s" there). A text that is no duration is left for validation to name.
_CONFIG_DURATIONS = {
    "sleep": ("duration",),
    "wait_for_event": ("timeout",),
    "approval": ("timeout",),
}


def _nanoseconds(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return to_nanoseconds(parse_duration(value))
    except (WorkflowError, ValueError):
        return value


def _empty_is_none(value: Any) -> Any:
    """Go's zero string, map or slice ("", {}, [], null) means unset."""
    return None if isinstance(value, str | dict | list) and not value else value


class RetryPolicy(GoModel):
    """How often and how soon a failed step is retried (Go `dag.RetryPolicy`).

    `max_attempts` counts retries, not runs: a step runs at most `max_attempts + 1` times
    (0 = no retry), as in the Go engine, whose attempt number starts at 1 with the first
    run and which retries while `attempts <= max_attempts`. `max_delay` 0 means no cap.
    """

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


class AgentLoopConfig(GoModel):
    """Bounds of an agent_loop step (Go `dag.AgentLoopConfig`, read from and written to the
    step's `config`): whichever of the limits fires first ends the loop."""

    max_iterations: PosInt
    max_duration: OptDuration = None
    loop_delay: OptDuration = None
    budget_warn_at: NonNegInt | None = None
    budget_force_at: NonNegInt | None = None


class MapConfig(GoModel):
    """Fan-out bounds of a map step; `concurrency` None means all instances at once."""

    max_items: Annotated[int, Strict(), Field(gt=0, le=MAP_ITEMS_MAX)] = MAP_ITEMS_DEFAULT
    concurrency: PosInt | None = None


_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


class ParentCond(GoModel):
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
        """The condition as Go writes it."""
        value = copy.deepcopy(self.value)
        return {"step_id": self.step_id, "field": self.field, "op": self.op, "value": value}


class ConcurrencyLimit(GoModel):
    """Workflow-level parallelism; 0 or None means unlimited."""

    max_runs: NonNegInt | None = None
    max_steps: Annotated[int, Strict(), Field(ge=0, le=MAX_STEPS_LIMIT)] | None = None


class StepDef(GoModel):
    """One step of a workflow (Go `dag.StepDef`).

    Accepted and kept, not enforced yet: `rate_limit`, `keyed_rate_limit`,
    `max_task_concurrency` and `singleton` (see docs/limits.md).
    """

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
    loop: AgentLoopConfig | None = None  # read only (older files); written in `config`
    skip_if: ParentCond | None = None
    metadata: dict[str, str] | None = None
    worker_group: str | None = None
    on_failure: str | None = None
    compensate: str | None = None
    rate_limit: RateLimit | None = None
    keyed_rate_limit: KeyedRateLimit | None = None
    max_task_concurrency: Annotated[int, Strict(), Field(ge=0, le=TASK_CONCURRENCY_MAX)] = 0
    singleton: Annotated[bool, Strict()] = False
    required_capabilities: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_reserved_metadata(cls, data: Any) -> Any:
        return read_reserved_metadata(data)

    _none_if_empty = field_validator(
        "task",
        "config",
        "metadata",
        "required_capabilities",
        "worker_group",
        "on_failure",
        "compensate",
    )(_empty_is_none)

    @model_validator(mode="after")
    def _settings_in_place(self) -> StepDef:
        """Valid agent_loop settings given in `config` move to `loop`; a map step's config
        gets the default `max_items` when it has none (Go needs the key)."""
        if self.type == "agent_loop" and self.loop is None and self.config:
            settings = {k: v for k, v in self.config.items() if k in LOOP_KEYS}
            if settings:
                try:
                    self.loop = AgentLoopConfig.model_validate(settings)
                except ValidationError:
                    return self
                self.config = {k: v for k, v in self.config.items() if k not in LOOP_KEYS} or None
        if self.type == "map" and "max_items" not in (self.config or {}):
            self.config = {"max_items": MAP_ITEMS_DEFAULT, **(self.config or {})}
        keys = _CONFIG_DURATIONS.get(self.type, ())
        if self.config and any(isinstance(self.config.get(k), str) for k in keys):
            self.config = {k: _nanoseconds(v) if k in keys else v for k, v in self.config.items()}
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
        """The step as Go's `dag.StepDef` JSON (see the module's docstring)."""
        out: dict[str, Any] = {"id": self.id}
        if self.task is not None:
            out["task"] = self.task
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        if self.retries is not None:
            out["retries"] = self.retries
        if self.timeout is not None:
            out["timeout"] = to_nanoseconds(self.timeout)
        out["type"] = self.type
        config = copy.deepcopy(self.config or {})
        if self.loop is not None:
            config = {**self.loop.to_dict(), **config}
        if config:
            out["config"] = config
        if self.skip_if is not None:
            out["skip_if"] = self.skip_if.to_dict()
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.retry is not None:
            out["retry"] = self.retry.to_dict()
        for key in ("worker_group", "on_failure", "compensate"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("rate_limit", "keyed_rate_limit"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        if self.max_task_concurrency:
            out["max_task_concurrency"] = self.max_task_concurrency
        if self.singleton:
            out["singleton"] = True
        if self.required_capabilities:
            out["required_capabilities"] = list(self.required_capabilities)
        return out


class WorkflowDef(GoModel):
    """A workflow: named steps and the dependencies between them (Go `dag.WorkflowDef`).

    Accepted and kept, not enforced yet: `idempotency_key`, `priority`, `cancel_on`,
    `singleton`, and `aux_steps` entries that are not on_failure / compensate targets.
    """

    name: str
    version: str = "1.0"
    steps: list[StepDef]
    default_retry: RetryPolicy | None = None
    concurrency: ConcurrencyLimit | None = None
    timeout: OptDuration = None
    input_schema: Any = None
    output_schema: Any = None
    # Go's workflow-file `triggers` (cli.workflowFile), kept as given but for debounce
    # durations, which are read in every form and kept as nanoseconds.
    triggers: list[dict[str, Any]] | None = None
    # Worker affinity, Go's WorkflowDef.Sticky: after the first completed step, a run's
    # tasks go to the worker that completed it.
    sticky: Literal["soft", "hard"] | None = None
    # Go's AuxSteps: steps run only by another step's on_failure / compensate. Every such
    # target is added (as Go's builder does); other entries are kept, not enforced yet.
    aux_steps: dict[str, Annotated[bool, Strict()]] | None = None
    # Accepted and kept, not enforced yet (see `fields`): runs are not deduplicated by
    # `idempotency_key` (a dot-path into the input) and run in order regardless of
    # `priority`; `cancel_on` events and `singleton` are not acted on.
    idempotency_key: str | None = None
    priority: PriorityConfig | None = None
    cancel_on: Annotated[list[CancelOn], Field(max_length=CANCEL_ON_MAX)] | None = None
    singleton: SingletonConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_schema_ref(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k != "$schema"}
            version = data.get("version")
            if isinstance(version, int | float) and not isinstance(version, bool):
                data["version"] = str(version)
        return data

    _none_if_empty = field_validator("triggers", "aux_steps", "cancel_on")(_empty_is_none)
    _none_if_blank = field_validator("sticky", "idempotency_key", mode="before")(_empty_is_none)

    @field_validator("triggers")
    @classmethod
    def _debounce_in_nanoseconds(cls, value: Any) -> Any:
        return None if value is None else [debounce_in_ns(t) for t in value]

    @model_validator(mode="after")
    def _handlers_are_aux(self) -> WorkflowDef:
        if self.handler_steps:
            self.aux_steps = {**(self.aux_steps or {}), **dict.fromkeys(self.handler_steps, True)}
        return self

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
        """The definition as Go's workflow file (`dag.WorkflowDef` JSON plus `triggers`),
        which `dagnats workflow validate` and `register` read."""
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "steps": [s.to_dict() for s in self.steps],
        }
        for key in ("default_retry", "concurrency"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        if self.timeout is not None:
            out["timeout"] = to_nanoseconds(self.timeout)
        for key in ("input_schema", "output_schema", "aux_steps", "idempotency_key", "sticky"):
            if getattr(self, key) is not None:
                out[key] = copy.deepcopy(getattr(self, key))
        for key in ("priority", "singleton"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        if self.cancel_on:
            out["cancel_on"] = [c.to_dict() for c in self.cancel_on]
        if self.triggers:
            out["triggers"] = copy.deepcopy(self.triggers)
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
