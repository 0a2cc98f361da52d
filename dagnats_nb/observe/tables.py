"""How the engine's tables show to a person: the columns that matter, in human units.

A view (``eng.stream_stats()``, ``consumer_lag()``, ``health()``, a sizing report's tables)
returns a :class:`HumanFrame`: a pandas DataFrame whose numbers stay numbers (``df["bytes"]
.sum()`` works), and whose notebook and text renderings show ``7.6 GiB``, ``30 d``,
``3.1 %``, leave out the columns few people need (``.wide()`` shows every column), and say
what they leave out. The terminal prints the same text (``dagnats stats``).

Which table a frame is travels in ``df.attrs["dagnats.table"]`` (pandas carries ``attrs``
through filtering, sorting, ``set_index``...). A frame whose columns someone picked
(``df[["consumer", "pending"]]``) shows exactly those, formatted.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dagnats_nb.observe import units

TABLE = "dagnats.table"
WIDE = "dagnats.wide"
HIDDEN_ROWS = "dagnats.hidden_rows"  # (count, what, option, rows left): see hide_rows
HINTS = "dagnats.hints"  # "python" (default), "magic" or "cli": how notes name options
CODE = re.compile(r"`([^`]+)`")  # `code` in a note: <code> in HTML

FORMATS: dict[str, Callable[[Any], str]] = {
    "bytes": units.human_bytes,
    "seconds": units.human_duration,
    "share": units.human_share,
    "count": units.human_count,
    "number": units.human_number,
    "ratio": units.human_ratio,
    "time": units.human_time,
    "cost": units.human_cost,
}
OPTION_WORDS = {
    "python": {"wide": "`.wide()`", "all": "`include_internal=True`"},
    "magic": {"wide": "`--wide` (or `.wide()`)", "all": "`--all`"},
    "cli": {"wide": "--wide", "all": "--all"},
}


@dataclass(frozen=True, slots=True)
class Table:
    """A table's display: the unit of each column, the columns left out unless wide, the
    headers shown (``max_age_s`` holds seconds, shows as ``max_age``: ``30 d``)."""

    name: str
    columns: tuple[str, ...]  # every column, in order (an empty table has them too)
    units: Mapping[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    # (columns, the unit of their value in one row): a column holding bytes in one row and
    # a count in the next (account's ``used``, health's ``value``)
    row_units: tuple[tuple[str, ...], Callable[[Mapping[str, Any]], str]] | None = None


def _account_unit(row: Mapping[str, Any]) -> str:
    item = str(row.get("item", ""))
    return "bytes" if "storage" in item or "bytes" in item else "count"


def _health_unit(row: Mapping[str, Any]) -> str:
    check = str(row.get("check", ""))
    if check.endswith("(s)"):
        return "seconds"
    if "share" in check:
        return "share"
    if check.startswith("disk"):
        return "bytes"
    return "number"


def _comparison_unit(row: Mapping[str, Any]) -> str:
    return "bytes" if str(row.get("item", "")).startswith("bytes") else "number"


def _names(text: str) -> tuple[str, ...]:
    """Column names written as one string: ``_names("stream kind bytes")``."""
    return tuple(text.split())


def _units(**columns: str) -> dict[str, str]:
    """``_units(bytes="bytes max_bytes")``: each column named in a unit's string has it."""
    return {col: unit for unit, names in columns.items() for col in names.split()}


def _seconds_labels(*names: str) -> dict[str, str]:
    return {n: n.removesuffix("_s") for n in names}


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "streams",
            _names(
                "stream kind messages bytes first_seq last_seq first_time last_time subjects "
                "consumers max_age_s max_bytes max_msgs retention storage dedup_window_s "
                "store_share"
            ),
            units=_units(
                count="messages first_seq last_seq subjects consumers max_msgs",
                bytes="bytes max_bytes",
                time="first_time last_time",
                seconds="max_age_s dedup_window_s",
                share="store_share",
            ),
            extra=_names(
                "first_seq last_seq first_time last_time subjects max_msgs retention storage "
                "dedup_window_s"
            ),
            labels=_seconds_labels("max_age_s", "dedup_window_s"),
        ),
        Table(
            "lag",
            _names(
                "stream consumer durable filter pending ack_pending redelivered waiting_pulls "
                "max_ack_pending ack_wait_s last_delivered_seq last_acked_seq last_active"
            ),
            units=_units(
                count="pending ack_pending redelivered waiting_pulls max_ack_pending "
                "last_delivered_seq last_acked_seq",
                seconds="ack_wait_s",
                time="last_active",
            ),
            extra=_names(
                "durable max_ack_pending ack_wait_s last_delivered_seq last_acked_seq last_active"
            ),
            labels=_seconds_labels("ack_wait_s"),
        ),
        Table(
            "kv",
            _names("bucket keys values bytes history ttl_s storage"),
            units=_units(count="keys values history", bytes="bytes", seconds="ttl_s"),
            labels=_seconds_labels("ttl_s"),
        ),
        Table(
            "account",
            ("item", "used", "limit", "share"),
            units=_units(share="share"),
            row_units=(("used", "limit"), _account_unit),
        ),
        Table(
            "health",
            ("check", "level", "subject", "value", "threshold", "action"),
            row_units=(("value", "threshold"), _health_unit),
        ),
        Table(
            "status streams",
            ("stream", "messages", "bytes"),
            units=_units(count="messages", bytes="bytes"),
        ),
        Table(
            "sizing",
            ("kind", "item", "bytes", "GiB"),
            units=_units(bytes="bytes", number="GiB"),
            extra=("GiB",),
        ),
        Table(
            "sizing comparison",
            ("item", "rule_of_thumb", "measured", "measured_over_rule"),
            units=_units(ratio="measured_over_rule"),
            row_units=(("rule_of_thumb", "measured"), _comparison_unit),
        ),
        Table(
            "sizing workflows",
            _names("workflow runs steps events_per_run bytes_per_event bytes_per_run"),
            units=_units(
                count="runs",
                number="steps events_per_run",
                bytes="bytes_per_event bytes_per_run",
            ),
        ),
        Table(  # eng.compare: two runs side by side (dag.compare)
            "compare",
            _names(
                "step_id type status_a status_b items_a items_b duration_a duration_b "
                "tokens_a tokens_b cost_a cost_b reused changed definition_changed"
            ),
            units=_units(
                seconds="duration_a duration_b", count="tokens_a tokens_b", cost="cost_a cost_b"
            ),
            extra=_names("type items_a items_b"),
        ),
    )
}


class HumanFrame(pd.DataFrame):
    """A DataFrame that displays for people (see the module); arithmetic is pandas'."""

    @property
    def _constructor(self):
        return HumanFrame

    def wide(self) -> HumanFrame:
        """The same frame, displayed with every column."""
        out = self.copy(deep=False)
        out.attrs[WIDE] = True
        return out

    def __repr__(self) -> str:
        return render_text(self)

    def _repr_html_(self) -> str | None:
        return render_html(self)


def frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame, table: str, **attrs: Any) -> HumanFrame:
    """``rows`` as the :class:`HumanFrame` of ``table`` (a name in :data:`TABLES`)."""
    spec = TABLES[table]
    rows = rows if isinstance(rows, pd.DataFrame) else list(rows)
    df = HumanFrame(rows) if len(rows) else HumanFrame(columns=list(spec.columns))
    df.attrs[TABLE] = table
    df.attrs.update(attrs)
    return df


def hide_rows(df: pd.DataFrame, keep: Any, what: str, option: str) -> pd.DataFrame:
    """``df[keep]``, noting how many rows of ``what`` were left out and which option
    (a key of :data:`OPTION_WORDS`' entries, e.g. ``"all"``) shows them. The note shows
    while the frame has the rows it was given (not on a frame filtered from it)."""
    hidden = int((~keep).sum())
    out = df[keep].reset_index(drop=True)
    if hidden:
        out.attrs[HIDDEN_ROWS] = (hidden, what, option, len(out))
    return out


def shown_columns(df: pd.DataFrame, spec: Table) -> list[str]:
    """The columns displayed: all but the table's extras, unless the frame is wide or
    someone picked columns (then some extra is missing: show what they picked)."""
    cols = list(df.columns)
    if df.attrs.get(WIDE) or not all(c in cols for c in spec.extra):
        return cols
    return [c for c in cols if c not in spec.extra]


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The text a person sees, cell by cell (a DataFrame of strings, headers relabelled);
    ``df`` itself when it is no table of :data:`TABLES`."""
    spec = TABLES.get(df.attrs.get(TABLE, ""))
    if spec is None:
        return df
    shown = set(shown_columns(df, spec))
    by_row = dict.fromkeys(spec.row_units[0], spec.row_units[1]) if spec.row_units else {}
    records = df.to_dict("records") if by_row else []
    cells, headers = {}, []
    for i, col in enumerate(df.columns):
        if col not in shown:
            continue
        values = df.iloc[:, i]
        if col in by_row:
            unit_of = by_row[col]
            text = [FORMATS[unit_of(r)](v) for r, v in zip(records, values, strict=True)]
        elif col in spec.units:
            text = [FORMATS[spec.units[col]](v) for v in values]
        else:  # text, or a column someone added (a count reads 207, not 207.0)
            text = [_plain(v) for v in values]
        cells[len(headers)] = text
        headers.append(spec.labels.get(col, col))
    out = pd.DataFrame(cells, index=df.index)
    out.columns = headers
    return out


def _plain(value: Any) -> str:
    if units.missing(value):
        return ""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return units.human_number(value)
    return str(value)


def notes(df: pd.DataFrame, hints: str | None = None) -> list[str]:
    """What the display leaves out, and the option that shows it."""
    spec = TABLES.get(df.attrs.get(TABLE, ""))
    if spec is None:
        return []
    words = OPTION_WORDS[hints or df.attrs.get(HINTS, "python")]
    out = []
    hidden = df.attrs.get(HIDDEN_ROWS)
    if hidden and hidden[3] == len(df):
        count, what, option, _ = hidden
        out.append(f"{count} {what} not shown: {words[option]} shows them")
    left_out = [c for c in df.columns if c not in shown_columns(df, spec)]
    if left_out:
        many = "s" * (len(left_out) > 1)
        out.append(
            f"{len(left_out)} more column{many} ({', '.join(map(str, left_out))}): "
            f"{words['wide']} shows {'them' if many else 'it'}"
        )
    return out


def _index_shown(df: pd.DataFrame) -> bool:
    return not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)


def _rows(shown: pd.DataFrame, every_row: bool) -> tuple[pd.DataFrame, list[str]]:
    """Long tables as pandas shows them, the first and last ``display.min_rows`` / 2 rows
    once there are more than ``display.max_rows`` (with a note saying so); every row
    with ``every_row`` (a terminal)."""
    most, least = pd.get_option("display.max_rows"), pd.get_option("display.min_rows")
    if every_row or most is None or len(shown) <= most:
        return shown, []
    half = max(1, (least or most) // 2)
    gap = pd.DataFrame([["..."] * shown.shape[1]], columns=shown.columns, index=["..."])
    cut = pd.concat([shown.head(half), gap, shown.tail(half)])
    return cut, [f"{len(shown):,} rows: the first and last {half} shown"]


def render_text(
    df: pd.DataFrame,
    hints: str | None = None,
    *,
    with_notes: bool = True,
    every_row: bool = False,
) -> str:
    """The table as text (a terminal, a notebook's text/plain), then its notes."""
    shown = display_frame(df)
    if shown is df:
        return pd.DataFrame.__repr__(df)
    cut: list[str] = []
    if shown.empty:
        body = f"(no rows: columns {', '.join(map(str, shown.columns))})"
    else:
        rows, cut = _rows(shown, every_row)
        with pd.option_context("display.max_colwidth", None, "display.width", None):
            body = rows.to_string(index=_index_shown(df))
    return "\n".join([body, *cut, *(notes(df, hints) if with_notes else [])])


def render_html(
    df: pd.DataFrame, hints: str | None = None, *, with_notes: bool = True
) -> str | None:
    """The table as HTML (a notebook), then its notes."""
    shown = display_frame(df)
    if shown is df:
        return pd.DataFrame._repr_html_(df)
    rows, cut = _rows(shown, False)
    with pd.option_context("display.max_colwidth", None):
        body = rows.to_html(index=_index_shown(df), classes="dagnats-table")
    extra = "".join(
        '<div class="dagnats-table-note" style="font-size:smaller;opacity:0.75">'
        + CODE.sub(r"<code>\1</code>", html.escape(n))
        + "</div>"
        for n in [*cut, *(notes(df, hints) if with_notes else [])]
    )
    return body + extra
