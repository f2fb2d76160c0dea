"""Read one table of a ``pyproject.toml`` on Python 3.10, which has no :mod:`tomllib`.

Only what the checker's settings use is understood inside the wanted table: strings (basic and
literal), booleans, integers and arrays of those, over several lines when bracketed. Every other
table is skipped without being interpreted, so the rest of the file may use any TOML syntax.
"""

from __future__ import annotations

import re

__all__ = ["TOMLError", "read_table"]

_HEADER = re.compile(r"^\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*=\s*""")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class TOMLError(ValueError):
    """The table could not be read."""


def _header_path(text: str) -> tuple[str, ...]:
    parts = []
    for raw in text.split("."):
        part = raw.strip()
        if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> TOMLError:
        line = self.text.count("\n", 0, self.pos) + 1
        return TOMLError(f"line {line}: {message}")

    def skip_space(self, *, newlines: bool) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            else:
                return

    def value(self) -> object:
        self.skip_space(newlines=False)
        if self.pos >= len(self.text):
            raise self.error("a value is missing")
        char = self.text[self.pos]
        if char == "[":
            return self.array()
        if char == '"':
            return self.basic_string()
        if char == "'":
            end = self.text.find("'", self.pos + 1)
            if end < 0 or "\n" in self.text[self.pos : end]:
                raise self.error("unterminated string")
            result = self.text[self.pos + 1 : end]
            self.pos = end + 1
            return result
        match = re.compile(r"true|false|[+-]?\d[\d_]*").match(self.text, self.pos)
        if match is None:
            raise self.error("only strings, booleans, integers and arrays are understood here")
        self.pos = match.end()
        word = match.group()
        if word in {"true", "false"}:
            return word == "true"
        return int(word.replace("_", ""))

    def basic_string(self) -> str:
        out: list[str] = []
        self.pos += 1
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\n":
                break
            if char == "\\":
                code = self.text[self.pos + 1 : self.pos + 2]
                if code in _ESCAPES:
                    out.append(_ESCAPES[code])
                    self.pos += 2
                    continue
                if code in {"u", "U"}:
                    width = 4 if code == "u" else 8
                    digits = self.text[self.pos + 2 : self.pos + 2 + width]
                    try:
                        out.append(chr(int(digits, 16)))
                    except ValueError:
                        raise self.error("bad unicode escape") from None
                    self.pos += 2 + width
                    continue
                raise self.error("bad escape")
            out.append(char)
            self.pos += 1
        raise self.error("unterminated string")

    def array(self) -> list[object]:
        self.pos += 1
        items: list[object] = []
        while True:
            self.skip_space(newlines=True)
            if self.text[self.pos : self.pos + 1] == "]":
                self.pos += 1
                return items
            items.append(self.value())
            self.skip_space(newlines=True)
            char = self.text[self.pos : self.pos + 1]
            if char == ",":
                self.pos += 1
            elif char != "]":
                raise self.error("expected ',' or ']' in an array")


def read_table(text: str, path: tuple[str, ...]) -> dict[str, object] | None:
    """The keys of table ``[a.b.c]`` (``path``) in ``text``, or None when the table is absent."""
    result: dict[str, object] | None = None
    inside = False
    reader = _Reader(text)
    lines_start = 0
    while lines_start < len(text):
        end = text.find("\n", lines_start)
        end = len(text) if end < 0 else end
        line = text[lines_start:end]
        stripped = line.strip()
        next_start = end + 1
        if stripped.startswith("[") and not stripped.startswith("[["):
            header = _HEADER.match(stripped)
            inside = header is not None and _header_path(header.group(1)) == path
            if inside and result is None:
                result = {}
        elif stripped.startswith("[["):
            inside = False
        elif inside and stripped and not stripped.startswith("#"):
            key = _KEY.match(line)
            if key is None:
                reader.pos = lines_start
                raise reader.error("expected 'key = value'")
            name = key.group(1)
            if name[0] in "\"'":
                name = name[1:-1]
            reader.pos = lines_start + key.end()
            assert result is not None  # noqa: S101 -- set when the header was read
            result[name] = reader.value()
            reader.skip_space(newlines=False)
            if reader.pos < len(text) and text[reader.pos] != "\n":
                raise reader.error("unexpected text after a value")
            next_start = reader.pos + 1
        elif not inside:
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:  # skip the body of a multi-line string
                    close = text.find(quote, lines_start + line.index(quote) + 3)
                    if close >= 0:
                        after = text.find("\n", close)
                        next_start = len(text) if after < 0 else after + 1
                    break
        lines_start = next_start
    return result
