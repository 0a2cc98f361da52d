"""YAML text as data, fast and bounded: the values are built straight from the parser's
events (libyaml's when installed) instead of PyYAML's node graph and constructor, 5-8x
faster on a workflow of 10,000 steps, with PyYAML's safe_load results.

Each list and mapping is measured as it ends (its size as JSON, roughly, and its depth,
aliases expanded), so an alias bomb is refused when it passes `limits.MAX_BYTES` without
being expanded, and an anchor that holds an alias to itself is refused too. A document
using what this reader leaves to PyYAML (explicit tags, merge keys `<<`, keys that are lists
or mappings, anchors defined twice or aliases before their anchor, several documents) is
read by PyYAML's own safe loader, measured node by node (`limits.check_yaml_nodes`) before
it is built.
"""

from __future__ import annotations

from typing import Any

import yaml

from . import limits

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVERS = yaml.resolver.Resolver.yaml_implicit_resolvers
_STR = "tag:yaml.org,2002:str"
_BUILT = yaml.constructor.SafeConstructor()
_SCALAR_TAGS = {
    f"tag:yaml.org,2002:{t}": _BUILT.yaml_constructors[f"tag:yaml.org,2002:{t}"]
    for t in ("null", "bool", "int", "float", "timestamp")
}
_NO_KEY = object()


class _LeftToPyYAML(Exception):
    """The document uses what this reader does not build: PyYAML's loader reads it."""


def read_yaml(text: str, label: str) -> Any:
    """The data of YAML `text` (one document), as `yaml.safe_load` builds it; WorkflowError
    (one line, naming `label` and the line) for aliases expanding it past the limits."""
    try:
        return _from_events(text, label)
    except _LeftToPyYAML:
        return _with_pyyaml(text, label)


def _with_pyyaml(text: str, label: str) -> Any:
    loader = LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        limits.check_yaml_nodes(node, label)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _Open:
    """A list or mapping being built: its value, size and depth so far, its anchor."""

    __slots__ = ("anchor", "depth", "key", "mark", "size", "value")

    def __init__(self, value: list | dict, anchor: str | None, mark: Any) -> None:
        self.value, self.anchor, self.mark = value, anchor, mark
        self.size, self.depth, self.key = 2, 1, _NO_KEY


def _from_events(text: str, label: str) -> Any:
    stack: list[_Open] = []
    anchors: dict[str, tuple[Any, int, int]] = {}  # value, size as JSON, depth
    opened: set[str] = set()  # anchors of the lists and mappings not ended yet
    root: Any = None
    documents = 0
    for event in yaml.parse(text, Loader=LOADER):
        kind = type(event)
        if kind is yaml.ScalarEvent:
            value = _scalar(event)
            size, depth = len(event.value) + 2, 0
            if event.anchor is not None:
                _new_anchor(event.anchor, anchors, opened)
                anchors[event.anchor] = (value, size, depth)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            if event.tag is not None:  # explicit, even "!": PyYAML resolves it
                raise _LeftToPyYAML
            if event.anchor is not None:
                _new_anchor(event.anchor, anchors, opened)
                opened.add(event.anchor)
            container: list | dict = {} if kind is yaml.MappingStartEvent else []
            stack.append(_Open(container, event.anchor, event.start_mark))
            continue
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            done = stack.pop()
            value, size, depth = done.value, done.size, done.depth
            error = limits.expansion_error(label, done.mark, size, depth)
            if error is not None:
                raise error
            if done.anchor is not None:
                opened.discard(done.anchor)
                anchors[done.anchor] = (value, size, depth)
        elif kind is yaml.AliasEvent:
            if event.anchor in opened:
                raise limits.yaml_error(label, event.start_mark, limits.SELF_ALIAS)
            if event.anchor not in anchors:
                raise _LeftToPyYAML  # PyYAML names the undefined alias
            value, size, depth = anchors[event.anchor]
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise _LeftToPyYAML  # PyYAML says it expects a single document
            continue
        else:  # stream start and end, document end
            continue
        if not stack:
            root = value
            continue
        into = stack[-1]
        into.size += size + 1
        into.depth = max(into.depth, depth + 1)
        if isinstance(into.value, list):
            into.value.append(value)
        elif into.key is _NO_KEY:
            if isinstance(value, list | dict):
                raise _LeftToPyYAML  # PyYAML refuses an unhashable key
            into.key = value
        else:
            into.value[into.key] = value
            into.key = _NO_KEY
    return root


def _scalar(event: yaml.ScalarEvent) -> Any:
    """A scalar's value as PyYAML's safe constructor makes it (YAML 1.1 implicit types)."""
    value = event.value
    if event.tag is not None:  # explicit, even "!": PyYAML resolves it
        raise _LeftToPyYAML
    if not event.implicit[0]:  # quoted: text
        return value
    for tag, regexp in _RESOLVERS.get(value[:1], ()):
        if regexp.match(value):
            build = _SCALAR_TAGS.get(tag)
            if build is None:
                raise _LeftToPyYAML  # a merge key, '=' or '!': PyYAML's business
            return build(_BUILT, yaml.ScalarNode(tag, value))
    return value


def _new_anchor(name: str, anchors: dict, opened: set) -> None:
    if name in anchors or name in opened:
        raise _LeftToPyYAML  # PyYAML refuses an anchor defined twice
