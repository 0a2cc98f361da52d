"""How a problem with a workflow definition is told: one line naming the workflow, the
step and the field, and an error that keeps every such line."""

from __future__ import annotations

import json
from typing import Any

from ..errors import WorkflowError


def problem(workflow: str | None, step: str | int | None, field: str | None, reason: str) -> str:
    """One problem line: `workflow 'w' step 's': field 'f': reason` (step is an id or index)."""
    text = f"workflow '{workflow}'" if workflow else "workflow (unnamed)"
    if isinstance(step, int):
        text += f" step #{step + 1}"
    elif step:
        text += f" step '{step}'"
    if field:
        text += f": field '{field}'"
    return f"{text}: {reason}"


def workflow_error(problems: list[str], cls: type[WorkflowError] = WorkflowError) -> WorkflowError:
    """An error whose message joins `problems` with "; " and that keeps them in `.problems`."""
    error = cls("; ".join(problems))
    error.problems = list(problems)
    return error


def reason(err: Any) -> str:
    """A short human reason for one pydantic error dict."""
    kind, ctx, value = err.get("type", ""), err.get("ctx") or {}, err.get("input")
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    simple = {
        "missing": "is required",
        "greater_than_equal": f"must be >= {ctx.get('ge')}, got {shown}",
        "greater_than": f"must be > {ctx.get('gt')}, got {shown}",
        "less_than_equal": f"must be <= {ctx.get('le')}, got {shown}",
        "less_than": f"must be < {ctx.get('lt')}, got {shown}",
        "int_type": f"must be an integer, got {shown}",
        "int_parsing": f"must be an integer, got {shown}",
        "int_from_float": f"must be an integer, got {shown}",
        "float_type": f"must be a number, got {shown}",
        "float_parsing": f"must be a number, got {shown}",
        "finite_number": f"must be a finite number, got {shown}",
        "string_type": f"must be a string, got {shown}",
        "bool_type": f"must be true or false, got {shown}",
        "list_type": f"must be a list, got {shown}",
        "dict_type": f"must be a mapping, got {shown}",
        "model_type": f"must be a mapping, got {shown}",
        "model_attributes_type": f"must be a mapping, got {shown}",
        "literal_error": f"must be one of {ctx.get('expected')}, got {shown}",
    }
    if kind in simple:
        return simple[kind]
    msg = str(err.get("msg", kind))
    return msg.removeprefix("Value error, ")
