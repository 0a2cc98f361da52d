"""Reading a magic's line and cell body with ``$var`` and ``{expr}`` from the user namespace.

IPython would expand ``$var`` to ``str(value)`` before the magic sees its line, which turns
a dict into Python text with quotes that a shell-like split then mangles. ``%dagnats`` takes
its line unexpanded and expands each word itself: a word that is exactly ``$name`` or
``{expr}`` stands for the *object* (so ``--input $doc`` passes the dict as is), and a word
that is JSON stays JSON; ``$x`` and ``{x}`` inside a longer word expand to text as in IPython.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dagnats_nb.errors import DagnatsError

_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_.]*)$")
_BRACED = re.compile(r"\{([^{}\n]+)\}")
OBJECT = "\x00obj"  # placeholder prefix of a word that stands for an object


def split_words(line: str) -> list[str]:
    """Split on blanks outside quotes and brackets; quotes are removed around a whole word."""
    words: list[str] = []
    buf: list[str] = []
    depth, quote = 0, ""
    for ch in line:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth = max(0, depth - 1)
        elif ch.isspace() and depth == 0:
            if buf:
                words.append("".join(buf))
                buf = []
            continue
        buf.append(ch)
    if quote:
        raise DagnatsError(f"unclosed {quote} in: {line.strip()}")
    if buf:
        words.append("".join(buf))
    return [_unquote(w) for w in words]


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "'\"":
        return word[1:-1]
    return word


class Expander:
    """Expands words against a namespace; objects are replaced by placeholders."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.objects: list[Any] = []
        self.strings: set[str] = set()  # words that were a str variable or expression

    @property
    def ns(self) -> dict[str, Any]:
        return self.shell.user_ns

    def word(self, word: str) -> str:
        m = _NAME.match(word)
        if m:
            return self._keep(self._eval(m.group(1), word))
        if word.startswith("{") and word.endswith("}"):
            try:
                return self._keep(json.loads(word))
            except ValueError:
                pass
            for expr in (word[1:-1], word):
                try:
                    return self._keep(eval(expr, self.ns))  # noqa: S307 - the user's own namespace
                except Exception:
                    continue
            return word
        return self.text(word)

    def text(self, text: str) -> str:
        """Expand ``{expr}`` (and ``$name``) inside text; unknown ones stay as they are, and
        so do those naming a function or class (``{input}`` in an llm prompt template is the
        step's input, not Python's ``input``)."""

        def sub(m: re.Match) -> str:
            try:
                value = eval(m.group(1), self.ns)  # noqa: S307
            except Exception:
                return m.group(0)
            return m.group(0) if callable(value) else str(value)

        text = _BRACED.sub(sub, text)
        return re.sub(
            r"\$([A-Za-z_][A-Za-z0-9_]*)",
            lambda m: str(self.ns[m.group(1)]) if m.group(1) in self.ns else m.group(0),
            text,
        )

    def _eval(self, expr: str, word: str) -> Any:
        try:
            return eval(expr, self.ns)  # noqa: S307
        except NameError:
            raise DagnatsError(
                f"{word}: no variable '{expr.split('.')[0]}' in the namespace"
            ) from None
        except Exception as exc:
            raise DagnatsError(f"{word}: {type(exc).__name__}: {exc}") from None

    def _keep(self, value: Any) -> str:
        if isinstance(value, str):
            self.strings.add(value)
            return value
        self.objects.append(value)
        return f"{OBJECT}{len(self.objects) - 1}"

    def value(self, word: Any) -> Any:
        """The object a placeholder stands for, else the word itself."""
        if isinstance(word, str) and word.startswith(OBJECT):
            return self.objects[int(word[len(OBJECT) :])]
        return word


def read_json_value(value: Any, what: str) -> Any:
    """An object as is; text as JSON, else a Python literal (what ``str(dict)`` gives)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        pass
    import ast

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise DagnatsError(
            f"{what} {value!r} is neither JSON nor a Python literal: write "
            f"{what} '{{\"key\": 1}}', or {what} $var to pass a variable"
        ) from None
