"""Pure workflow logic: definitions, validation and run advancement (no I/O, no asyncio)."""

from .durations import format_duration as format_duration
from .durations import parse_duration as parse_duration
from .loader import load_workflow as load_workflow
from .model import SUPPORTED_STEP_TYPES as SUPPORTED_STEP_TYPES
from .model import AgentLoopConfig as AgentLoopConfig
from .model import ConcurrencyLimit as ConcurrencyLimit
from .model import MapConfig as MapConfig
from .model import ParentCond as ParentCond
from .model import RetryPolicy as RetryPolicy
from .model import StepDef as StepDef
from .model import WorkflowDef as WorkflowDef
from .validate import validate as validate
