"""Workflow YAML is read from the parser's events (``dag.yamltext``): the data must be what
PyYAML's safe loader builds over the same parser (libyaml's when installed), for any
document, and what it leaves to PyYAML must still be read (or refused) as PyYAML does."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats_nb.dag.yamltext import LOADER, read_yaml


def safe_load(text: str):
    """PyYAML's safe loader over the parser read_yaml uses."""
    return yaml.load(text, Loader=LOADER)  # noqa: S506 (a safe loader)


# Scalars whose text YAML 1.1 reads as something else than a string.
TRICKY = st.sampled_from(
    ["yes", "No", "on", "OFF", "~", "null", "", "0x1f", "0o17", "017", "1_000", "1:30", "-1",
     "+3", "1e3", "1.", ".5", ".nan", "-.inf", "2024-01-02", "2024-01-02T03:04:05Z", "<<", "=",
     "0b101", "190:20:30", "t", "s1", "a b", "#x", "- x", "'q'", '"d"', "&a", "*a", "!x"]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | TRICKY
)
DATA = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | TRICKY, inner, max_size=4)
    ),
    max_leaves=25,
)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(data=DATA, flow=st.booleans())
def test_any_dumped_document_reads_as_pyyaml_reads_it(data, flow):
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    assert same(read_yaml(text, "t"), safe_load(text)), text


@settings(max_examples=300, deadline=None)
@given(words=st.lists(TRICKY | st.text(alphabet="ab:-&*!{}[], '\"\n#|>?<=~.0123", max_size=8)))
def test_any_text_reads_or_fails_as_pyyaml_does(words):
    text = " ".join(words)
    try:
        expected = ("ok", safe_load(text))
    except yaml.YAMLError as exc:
        expected = ("error", type(exc).__name__)
    except ValueError:
        expected = ("error", "ValueError")
    try:
        got = ("ok", read_yaml(text, "t"))
    except yaml.YAMLError as exc:
        got = ("error", type(exc).__name__)
    except ValueError:
        got = ("error", "ValueError")
    assert got[0] == expected[0] and (got[0] == "error" or same(got[1], expected[1])), text


@pytest.mark.parametrize(
    "text",
    [
        "- &a {x: [1, 2]}\n- *a\n- [*a, *a]\n",  # aliases share the value, as PyYAML's
        "a: !!str 3\nb: ! 12\nc: !\n",  # explicit tags: PyYAML's loader
        "<<: {a: 1}\nb: 2\n",  # a merge key
        "? [1, 2]\n: x\n",  # an unhashable key: PyYAML's error
        "a: &x 1\nb: &x 2\n",  # an anchor defined twice: PyYAML's error
        "a: *nope\n",  # an undefined alias: PyYAML's error
        "a: 1\n---\nb: 2\n",  # two documents: PyYAML's error
        "",
        "---\n",
    ],
)
def test_what_is_left_to_pyyaml_reads_as_pyyaml_does(text):
    try:
        expected = safe_load(text)
    except yaml.YAMLError as exc:
        with pytest.raises(type(exc)):
            read_yaml(text, "t")
        return
    got = read_yaml(text, "t")
    assert same(got, expected)
    if isinstance(got, list) and len(got) == 3:
        assert got[1] is got[0] and got[2][0] is got[0]
