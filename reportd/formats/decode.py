"""Bodies to plain data: JSON with orjson, YAML with a bounded builder over libyaml's events.

Both give what JSON can hold (string-keyed dicts, lists, strings, numbers,
booleans, null; YAML adds times) and refuse what no processor could store:
NUL in a string, lone surrogates, numbers that are not finite or do not fit 64
bits, nesting deeper than :data:`~reportd.formats.fields.MAX_DEPTH`.

YAML gets its own builder rather than PyYAML's loader because the loader
composes a node graph of the whole document before building data (about 20
times the body in memory, and recursion that overflows at a few hundred
levels) and shares aliased objects, so that a 3 KB "billion laughs" body
becomes an unbounded report as soon as anything serializes it. The builder
works from the event stream with an explicit stack, counts what aliases would
expand to and refuses a document that would grow past
:data:`ALIAS_GROWTH` times its own size.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from json.decoder import WHITESPACE as _WHITESPACE  # type: ignore[attr-defined]
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

import orjson
import yaml
from yaml import events as ev
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from reportd.formats.fields import INT64_MIN, MAX_DEPTH, ReportError

#: What aliases may expand a YAML document to, as a multiple of its own size (plus a small allowance).
ALIAS_GROWTH = 4
ALIAS_ALLOWANCE = 64 * 1024

_NUL_ESCAPE = b"\\u0000"
_UINT64_MAX = 2**64 - 1


def json_data(body: bytes, *, lenient_utf8: bool = False) -> Any:
    """A JSON body as data; ``lenient_utf8`` replaces invalid UTF-8 (PSON) instead of refusing it."""
    if len(body) > LARGE_JSON_BYTES:
        return _json_in_pieces(body, lenient_utf8)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if not (lenient_utf8 and "utf-8" in str(error).lower()):
            raise ReportError(f"malformed JSON: {error}", "MALFORMED") from None
        try:
            data = orjson.loads(body.decode("utf-8", "replace"))
        except orjson.JSONDecodeError as error:
            raise ReportError(f"malformed JSON: {error}", "MALFORMED") from None
    if _has_nul_escape(body) and _contains_nul(data):
        raise ReportError("a string contains a NUL character (\\u0000)", "MALFORMED")
    return data


#: From this size on a JSON body is decoded piece by piece (:func:`_json_in_pieces`).
LARGE_JSON_BYTES = 512 * 1024
#: Containers above this depth are decoded element by element, and so are lists at it (the
#: logs of Foreman's wrapped report); anything deeper, a resource for one, in one go.
_SPLIT_DEPTH = 2
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _json_in_pieces(body: bytes, lenient_utf8: bool) -> Any:
    """A large JSON body decoded so that no single C call holds the interpreter for long.

    orjson decodes 16 MB in one call of about 180 ms, during which the event loop
    (in another thread) cannot run. Here the outer containers (a report's
    resources, logs, metrics) are walked in Python and each element is decoded by
    the json module's C scanner, a few microseconds each: the thread lets the
    loop in between. The result is the same data orjson gives, checked the same
    way (no NaN or Infinity, no NUL, no lone surrogates, valid UTF-8).
    """
    try:
        text = body.decode("utf-8", "replace" if lenient_utf8 else "strict")
    except UnicodeDecodeError as error:
        raise ReportError(
            f"malformed JSON: not UTF-8 ({error.reason} at byte {error.start})", "MALFORMED"
        ) from None
    try:
        data = _Pieces(text).document()
    except (ValueError, IndexError, StopIteration, RecursionError) as error:
        raise ReportError(f"malformed JSON: {_problem(error)}", "MALFORMED") from None
    if _has_nul_escape(body) and _contains_nul(data):
        raise ReportError("a string contains a NUL character (\\u0000)", "MALFORMED")
    if _LONE_SURROGATE_ESCAPE.search(body) and _contains_lone_surrogate(data):
        raise ReportError("malformed JSON: a string holds a lone surrogate", "MALFORMED")
    return data


def _problem(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deep"
    if isinstance(error, StopIteration | IndexError):
        return "unexpected end or character"
    return str(error).splitlines()[0]


def _not_finite(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _number(text: str) -> int | float:
    """An integer as orjson reads one: 64-bit (signed or not) as int, larger as a float."""
    number = int(text)
    if INT64_MIN <= number <= _UINT64_MAX:
        return number
    return _finite(text)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


class _Pieces:
    def __init__(self, text: str) -> None:
        self.text = text
        decoder = json.JSONDecoder(parse_constant=_not_finite, parse_int=_number, parse_float=_finite)
        self.scan = decoder.scan_once  # type: ignore[attr-defined]  # the C scanner, undeclared
        self.skip = _WHITESPACE.match

    def document(self) -> Any:
        value, end = self.value(self.skip(self.text, 0).end(), 0)
        if self.skip(self.text, end).end() != len(self.text):
            raise ValueError(f"extra data at character {end}")
        return value

    def value(self, at: int, depth: int) -> tuple[Any, int]:
        first = self.text[at]
        if depth < _SPLIT_DEPTH and first == "{":
            return self.mapping(at, depth)
        if depth <= _SPLIT_DEPTH and first == "[":
            return self.sequence(at, depth)
        return self.scan(self.text, at)

    def mapping(self, at: int, depth: int) -> tuple[dict, int]:
        text, skip = self.text, self.skip
        result: dict[str, Any] = {}
        at = skip(text, at + 1).end()
        if text[at] == "}":
            return result, at + 1
        while True:
            if text[at] != '"':
                raise ValueError(f"expected a key at character {at}")
            key, at = scanstring(text, at + 1)
            at = skip(text, at).end()
            if text[at] != ":":
                raise ValueError(f"expected ':' at character {at}")
            result[key], at = self.value(skip(text, at + 1).end(), depth + 1)
            at = skip(text, at).end()
            if text[at] == "}":
                return result, at + 1
            if text[at] != ",":
                raise ValueError(f"expected ',' or '}}' at character {at}")
            at = skip(text, at + 1).end()

    def sequence(self, at: int, depth: int) -> tuple[list, int]:
        text, skip = self.text, self.skip
        result: list[Any] = []
        at = skip(text, at + 1).end()
        if text[at] == "]":
            return result, at + 1
        while True:
            item, at = self.value(at, depth + 1)
            result.append(item)
            at = skip(text, at).end()
            if text[at] == "]":
                return result, at + 1
            if text[at] != ",":
                raise ValueError(f"expected ',' or ']' at character {at}")
            at = skip(text, at + 1).end()


def _contains_lone_surrogate(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    return True
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())
    return False


def _has_nul_escape(body: bytes) -> bool:
    """Whether the JSON text may hold a NUL (which it can only write as ``\\u0000``).

    Backslashes are found with memchr and are few in most reports, so this is
    far quicker than searching for the six-byte escape itself; a body full of
    them (Windows paths) falls back to that search.
    """
    find = body.find
    at = find(b"\\")
    for _ in range(64):
        if at < 0:
            return False
        if body[at + 1 : at + 6] == b"u0000":
            return True
        at = find(b"\\", at + 2)  # past the escaped character: "\\\\u0000" is no NUL
    return _NUL_ESCAPE in body


def _contains_nul(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if "\x00" in item:
                return True
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            if any("\x00" in key for key in item):
                return True
            stack.extend(item.values())
    return False


# -- YAML ----------------------------------------------------------------------
_STR = "tag:yaml.org,2002:str"
_MAP_TAGS = ("tag:yaml.org,2002:map",)
_SEQ_TAGS = ("tag:yaml.org,2002:seq",)
# Puppet's http report processor tags the report (and older Puppets its parts)
# with Ruby classes; they are data here, never code.
_RUBY_TAG_PREFIXES = ("!ruby/object:", "!ruby/hash:", "!ruby/array:", "!ruby/string:")
_RUBY_SYMBOL_TAGS = ("!ruby/sym", "!ruby/symbol")
_IMPLICIT = Resolver.yaml_implicit_resolvers
_constructor = SafeConstructor()
_SCALAR_CONSTRUCTORS: dict[str, Callable[[ScalarNode], Any]] = {
    "tag:yaml.org,2002:null": _constructor.construct_yaml_null,
    "tag:yaml.org,2002:bool": _constructor.construct_yaml_bool,
    "tag:yaml.org,2002:int": _constructor.construct_yaml_int,
    "tag:yaml.org,2002:float": _constructor.construct_yaml_float,
    "tag:yaml.org,2002:timestamp": _constructor.construct_yaml_timestamp,
}
_MERGE = "tag:yaml.org,2002:merge"
_BINARY = "tag:yaml.org,2002:binary"


class _Frame:
    __slots__ = ("anchor", "container", "key", "weight")

    def __init__(self, container: dict | list, anchor: str | None) -> None:
        self.container: Any = container
        self.anchor = anchor
        self.key: str | None = None
        self.weight = 1


_PENDING = object()  # an anchor whose container is still being built


_EventSource = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # libyaml's parser when installed


def yaml_data(body: bytes) -> Any:
    """A YAML body (one document) as data; see the module docstring for what is refused."""
    try:
        return _build(_EventSource(body), len(body))
    except yaml.YAMLError as error:
        raise ReportError(f"malformed YAML: {_first_line(error)}", "MALFORMED") from None


def _build(parser: Any, size: int) -> Any:
    """Data from ``parser``'s events, with an explicit stack (no recursion at any depth)."""
    budget = ALIAS_GROWTH * size + ALIAS_ALLOWANCE
    expanded = 0  # the size of the document with every alias expanded
    anchors: dict[str, tuple[Any, int]] = {}
    stack: list[_Frame] = []
    documents = 0
    root: Any = None
    while True:
        event = parser.get_event()
        kind = type(event)
        value: Any
        # Each branch yields a value for the enclosing container and its expanded weight.
        if kind is ev.ScalarEvent:
            weight = len(event.value) + 1
            if stack and stack[-1].key is None and type(stack[-1].container) is dict:
                value = _key(event)
            else:
                value = _scalar(event)
            if event.anchor is not None:
                anchors[event.anchor] = (value, weight)
            expanded += weight
        elif kind is ev.AliasEvent:
            value, weight = anchors.get(event.anchor, (None, -1))
            if weight < 0:
                raise ReportError(f"YAML alias *{event.anchor} names no anchor", "MALFORMED")
            if value is _PENDING:
                raise ReportError(f"YAML alias *{event.anchor} refers to itself", "MALFORMED")
            expanded += weight
        elif kind is ev.MappingStartEvent or kind is ev.SequenceStartEvent:
            _check_container_tag(event.tag, kind is ev.MappingStartEvent)
            if len(stack) >= MAX_DEPTH:
                raise ReportError(f"the document is nested deeper than {MAX_DEPTH} levels", "MALFORMED")
            if stack and stack[-1].key is None and type(stack[-1].container) is dict:
                raise ReportError("a mapping key must be a scalar", "MALFORMED")
            if event.anchor is not None:
                anchors[event.anchor] = (_PENDING, 0)
            stack.append(_Frame({} if kind is ev.MappingStartEvent else [], event.anchor))
            expanded += 1
            continue
        elif kind is ev.MappingEndEvent or kind is ev.SequenceEndEvent:
            frame = stack.pop()
            value, weight = frame.container, frame.weight  # already counted, child by child
            if frame.anchor is not None:
                anchors[frame.anchor] = (value, weight)
        elif kind is ev.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise ReportError("expected a single YAML document", "MALFORMED")
            continue
        elif kind is ev.StreamEndEvent:
            return root
        else:  # stream start, document end
            continue
        if expanded > budget:
            raise ReportError(
                f"YAML aliases expand the document past {ALIAS_GROWTH} times its size", "MALFORMED"
            )
        if not stack:
            root = value
            continue
        parent = stack[-1]
        parent.weight += weight
        if type(parent.container) is list:
            parent.container.append(value)
        elif parent.key is None:
            if type(value) is not str:
                raise ReportError("a mapping key must be a scalar", "MALFORMED")
            parent.key = value
        else:
            parent.container[parent.key] = value
            parent.key = None


def _check_container_tag(tag: str | None, mapping: bool) -> None:
    if tag is None or tag == "!" or tag.startswith(_RUBY_TAG_PREFIXES):
        return
    if tag in (_MAP_TAGS if mapping else _SEQ_TAGS):
        return
    raise ReportError(f"unsupported YAML tag {tag!r}", "MALFORMED")


def _key(event: ev.ScalarEvent) -> str:
    if event.tag is None and event.implicit[0] and event.value == "<<":
        raise ReportError("YAML merge keys (<<) are not supported", "MALFORMED")
    _check_text(event.value)
    return event.value


def _scalar(event: ev.ScalarEvent) -> Any:
    value: str = event.value
    tag = event.tag
    if tag is None or tag == "!":
        if not event.implicit[0]:  # quoted: a string
            return _check_text(value)
        tag = _resolve_plain(value)
    elif tag.startswith(_RUBY_TAG_PREFIXES) or tag in _RUBY_SYMBOL_TAGS:
        return _check_text(value)
    if tag == _STR:
        return _check_text(value)
    if tag == _BINARY:
        # Puppet writes strings that are not UTF-8 as !binary: keep them readable, as PSON does.
        try:
            raw = _constructor.construct_yaml_binary(ScalarNode(tag, value))
        except ConstructorError:
            raise ReportError("malformed YAML: bad !!binary value", "MALFORMED") from None
        return _check_text(raw.decode("utf-8", "replace"))
    if tag == _MERGE:
        raise ReportError("YAML merge keys (<<) are not supported", "MALFORMED")
    construct = _SCALAR_CONSTRUCTORS.get(tag)
    if construct is None:
        raise ReportError(f"unsupported YAML tag {tag!r}", "MALFORMED")
    try:
        result = construct(ScalarNode(tag, value))
    except (ValueError, ConstructorError, OverflowError):
        raise ReportError(f"malformed YAML: {value[:40]!r} is not a valid {tag.rsplit(':', 1)[-1]}",
                          "MALFORMED") from None  # fmt: skip
    if type(result) is int and not INT64_MIN <= result <= _UINT64_MAX:
        raise ReportError(f"malformed YAML: the integer {value[:40]} does not fit 64 bits", "MALFORMED")
    if type(result) is float and not math.isfinite(result):
        raise ReportError(f"malformed YAML: {value!r} is not a finite number", "MALFORMED")
    return result


def _resolve_plain(value: str) -> str:
    for tag, pattern in _IMPLICIT.get(value[0] if value else "", ()):
        if pattern.match(value):
            return tag
    return _STR


def _check_text(value: str) -> str:
    if "\x00" in value:
        raise ReportError("a string contains a NUL character", "MALFORMED")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ReportError("a string contains a lone surrogate", "MALFORMED") from None
    return value


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
