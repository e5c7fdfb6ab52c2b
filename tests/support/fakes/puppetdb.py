"""A strict test double for PuppetDB's command and report-query API.

``FakePuppetDB`` is a real aiohttp server that speaks the part of PuppetDB's wire
protocol a report forwarder uses: ``POST /pdb/cmd/v1`` (``store report``, version 8)
and ``GET /pdb/query/v4/reports``. It follows PuppetDB's own sources (PuppetDB 7/8,
``puppetlabs/puppetdb``), not only the project's spec; where they differ the source
wins:

``src/puppetlabs/puppetdb/http/command.clj``
    middleware order and answers: unsupported ``Content-Encoding`` -> 415 text;
    ``Content-Type`` not ``application/json`` -> 415 JSON ``{"kind", "msg"}`` (an
    absent Content-Type is accepted); ``Accept`` without ``application/json`` (or
    ``*/*``, ``application/*``) -> 406 JSON; parameter problems -> 400 JSON
    ``{"error"}``; a non-numeric ``secondsToWaitForCompletion`` -> 500 text. Without
    ``secondsToWaitForCompletion`` (or with a value <= 0) the command is queued and
    ``200 {"uuid"}`` is answered whatever the body holds.
``src/puppetlabs/puppetdb/command.clj``
    processing: a body that does not parse, or fails the v8 schema, is *fatal*: it
    goes straight to the dead-letter office and the waiting HTTP request is never
    told, so with ``secondsToWaitForCompletion=S`` the answer is, after S seconds,
    ``503 {"uuid", "processed": false, "timed_out": true}``. A body that passes the
    schema but fails in storage (a ``transaction_uuid`` PostgreSQL does not take as
    a uuid, a NUL character in a text column, a version above 8) answers
    ``503 {"uuid", "processed": true, "timed_out": false, "error", "stack_trace"}``
    and is retried (hourly, 5 attempts) before it is discarded; the fake discards at
    once.
``src/puppetlabs/puppetdb/reports.clj`` (``report-wireformat-schema``)
    the closed v8 schema enforced by :func:`validate_report_v8`.
``src/puppetlabs/puppetdb/scf/storage.clj`` + ``scf/hash.clj``
    the report hash (:func:`report_hash`), duplicates stored once.

The fake processes a command before its HTTP answer is sent, so ``reports`` and
``dead_letters`` can be asserted right after a POST returns; the answer itself never
depends on the outcome unless ``secondsToWaitForCompletion`` was given.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import math
import re
import uuid as uuidlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "DOWN_MESSAGE",
    "FakePuppetDB",
    "ReceivedCommand",
    "normalize_time",
    "report_hash",
    "report_identity_string",
    "validate_report_v8",
]

CMD_PATH = "/pdb/cmd/v1"
REPORTS_PATH = "/pdb/query/v4/reports"
DOWN_MESSAGE = "PuppetDB is currently down. Try again later."

# command.constants/command-names, sorted (http/command.clj valid-commands-str)
KNOWN_COMMANDS = (
    "configure expiration",
    "deactivate node",
    "replace catalog",
    "replace catalog inputs",
    "replace facts",
    "store report",
)
# http/command.clj min-supported-commands
MIN_SUPPORTED = {
    "configure expiration": 1,
    "replace catalog": 6,
    "replace catalog inputs": 1,
    "replace facts": 4,
    "store report": 5,
    "deactivate node": 3,
}
VALID_PARAMS = {
    "checksum",
    "secondsToWaitForCompletion",
    "certname",
    "command",
    "version",
    "producer-timestamp",
}
REQUIRED_PARAMS = ("certname", "command", "version")
SUPPORTED_ENCODINGS = ("gzip", "identity")  # utils/content-encodings->file-extensions
QUERY_PARAMS = {"query", "limit", "offset", "order_by", "include_total", "pretty", "origin", "timeout"}
MODES = ("up", "starting", "slow")


# --------------------------------------------------------------------------- times


_WIRE_TIME = re.compile(
    # java.time ISO_OFFSET_DATE_TIME / ISO_INSTANT: what PuppetDB's wire-format docs promise
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[Tt](?P<h>\d{2}):(?P<mi>\d{2})"
    r"(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<z>[Zz]|[+-]\d{2}:\d{2}(?::\d{2})?)"
)
_LENIENT_TIME = re.compile(
    # roughly clj-time's `from-string` (every formatter in clj-time.format/formatters),
    # which is what pls/Timestamp -> kitchensink/datetime? really accepts: zone optional
    # (then UTC), date-only, basic (no separators) forms.
    r"(?P<y>\d{4})(?P<sep>-?)(?:(?P<mo>\d{2})(?:(?P=sep)(?P<d>\d{2})"
    r"(?:[Tt ](?P<h>\d{2})(?::?(?P<mi>\d{2})(?::?(?P<s>\d{2})(?:\.(?P<f>\d{1,9}))?)?)?"
    r"(?P<z>[Zz]|[+-]\d{2}(?::?\d{2})?)?)?)?)?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse_time(value: Any, *, lenient: bool) -> int | None:
    """Epoch milliseconds (fraction truncated, as Joda does), or None if not a time."""
    if not isinstance(value, str):
        return None
    m = (_LENIENT_TIME if lenient else _WIRE_TIME).fullmatch(value)
    if m is None:
        return None
    g = m.groupdict()
    zone = g["z"] or "Z"
    if zone in ("Z", "z"):
        offset = timedelta(0)
    else:
        digits = zone[1:].replace(":", "")
        hours, minutes, seconds = int(digits[0:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
        offset = timedelta(hours=hours, minutes=minutes, seconds=seconds)
        if offset > timedelta(hours=18) or minutes > 59 or seconds > 59:
            return None
        if zone[0] == "-":
            offset = -offset
    try:
        moment = datetime(
            int(g["y"]),
            int(g["mo"] or 1),
            int(g["d"] or 1),
            int(g["h"] or 0),
            int(g["mi"] or 0),
            int(g["s"] or 0),
            tzinfo=timezone(offset),
        )
    except ValueError:
        return None
    millis = int(((g["f"] or "") + "000")[:3])
    return ((moment - _EPOCH) // timedelta(seconds=1)) * 1000 + millis


def _format_millis(millis: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"


def normalize_time(value: Any) -> str | None:
    """A wire time as PuppetDB stores and hashes it: UTC ``yyyy-MM-ddTHH:mm:ss.SSSZ``.

    Parsing is PuppetDB's lenient one (a missing zone means UTC); None if unparseable.
    """
    millis = _parse_time(value, lenient=True)
    return None if millis is None else _format_millis(millis)


# ----------------------------------------------------- Cheshire/Jackson-compatible JSON


def _u16(text: str) -> bytes:
    """Sort key giving java.lang.String#compareTo order (UTF-16 code units)."""
    return text.encode("utf-16-be", "surrogatepass")


def _keyword_sort_key(key: str) -> tuple[int, bytes, bytes]:
    # Cheshire keywordizes keys; a sorted-map of keywords orders by clojure.lang.Symbol
    # #compareTo: keywords without a namespace first, then namespace, then name.
    if "/" in key and key != "/":
        ns, _, name = key.partition("/")
        return (1, _u16(ns), _u16(name))
    return (0, b"", _u16(key))


def _sort_nested_maps(value: Any) -> Any:
    """kitchensink/sort-nested-maps."""
    if isinstance(value, dict):
        return {k: _sort_nested_maps(value[k]) for k in sorted(value, key=_keyword_sort_key)}
    if isinstance(value, list):
        return [_sort_nested_maps(v) for v in value]
    return value


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _jackson_string(text: str) -> str:
    def escape(m: re.Match[str]) -> str:
        ch = m.group()
        return _JSON_ESCAPES.get(ch) or f"\\u{ord(ch):04X}"  # Jackson writes upper-case hex

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def _java_double(x: float) -> str:
    """java.lang.Double#toString, which Jackson uses for doubles."""
    if math.isnan(x):
        return '"NaN"'  # Jackson's QUOTE_NON_NUMERIC_NUMBERS
    if math.isinf(x):
        return '"Infinity"' if x > 0 else '"-Infinity"'
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(x))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # value = 0.<digits> * 10**point
    if 1e-3 <= abs(x) < 1e7:
        if point <= 0:
            whole, frac = "0", "0" * -point + digits
        elif point >= len(digits):
            whole, frac = digits + "0" * (point - len(digits)), "0"
        else:
            whole, frac = digits[:point], digits[point:]
        return f"{sign}{whole}.{frac}"
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{point - 1}"


def _clj_json(value: Any) -> str:
    """cheshire generate-string (compact) of already-ordered data."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, str):
        return _jackson_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_clj_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_jackson_string(str(k)) + ":" + _clj_json(v) for k, v in value.items()) + "}"
    raise TypeError(f"not JSON data: {value!r}")


def _generic_identity_string(data: Any) -> str:
    """scf/hash.clj generic-identity-string."""
    return _clj_json(_sort_nested_maps(data))


def _db_serialize(value: Any) -> str:
    """scf/storage-utils db-serialize, after storage/replace-null-bytes."""
    if isinstance(value, str) and "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return _generic_identity_string(value)


# --------------------------------------------------------------------------- the hash


def _resource_events(body: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """reports/resources->resource-events: (resource, event) pairs."""
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for resource in body.get("resources") or []:
        if not isinstance(resource, dict):
            continue
        if resource.get("skipped") is True:  # a fabricated event; its own events are ignored
            fabricated = {
                "status": "skipped",
                "timestamp": resource.get("timestamp"),
                "property": None,
                "old_value": None,
                "new_value": None,
                "message": None,
                "corrective_change": False,
            }
            pairs.append((resource, fabricated))
        else:
            pairs.extend((resource, e) for e in resource.get("events") or [] if isinstance(e, dict))
    return pairs


def report_identity_string(body: dict[str, Any]) -> str:
    """The exact string PuppetDB 7.12 SHA-1s into a report's hash (see :func:`report_hash`).

    Checked against a real PuppetDB 7.12.1 (tests/data/puppetdb/store_report_v8.*):
    newer sources also hash the resource events; the release Debian ships does not.
    """
    return _generic_identity_string(
        {
            "certname": body.get("certname"),
            "puppet_version": body.get("puppet_version"),
            "report_format": body.get("report_format"),
            "configuration_version": body.get("configuration_version"),
            "start_time": normalize_time(body.get("start_time")),
            "end_time": normalize_time(body.get("end_time")),
            "producer_timestamp": normalize_time(body.get("producer_timestamp")),
            "transaction_uuid": body.get("transaction_uuid"),
        }
    )


def report_hash(body: dict[str, Any]) -> str:
    """PuppetDB's report hash, lower-case hex SHA-1 (spec/puppetdb.md).

    SHA-1 over the UTF-8 of the compact, key-sorted JSON of ``certname,
    puppet_version, report_format, configuration_version, start_time, end_time,
    producer_timestamp, transaction_uuid``, times normalized to UTC
    ``yyyy-MM-ddTHH:mm:ss.SSSZ`` (sub-millisecond digits truncated).
    """
    text = report_identity_string(body)
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()


# --------------------------------------------------------------------------- validation

REQ, OPT = True, False
_EVENT = {
    "status": (REQ, "str", False),
    "corrective_change": (REQ, "bool", True),
    "timestamp": (REQ, "time", False),
    "property": (REQ, "str", True),
    "new_value": (REQ, "json", True),
    "old_value": (REQ, "json", True),
    "message": (REQ, "str", True),
    "name": (OPT, "str", True),
}
_RESOURCE = {
    "skipped": (REQ, "bool", False),
    "timestamp": (REQ, "time", False),
    "resource_type": (REQ, "str", False),
    "resource_title": (REQ, "str", False),
    "file": (REQ, "str", True),
    "line": (REQ, "int", True),
    "containment_path": (REQ, ("list", "str"), False),
    "corrective_change": (REQ, "bool", True),
    "events": (REQ, ("list", _EVENT), False),
}
_METRIC = {
    "category": (REQ, "str", False),
    "name": (REQ, "str", False),
    "value": (REQ, "num", False),
}
_LOG = {
    "file": (REQ, "str", True),
    "line": (REQ, "int", True),
    "level": (REQ, "str", False),
    "message": (REQ, "str", False),
    "source": (REQ, "str", False),
    "tags": (REQ, ("list", "str"), False),
    "time": (REQ, "time", False),
}
REPORT_V8 = {
    "certname": (REQ, "str", False),
    "puppet_version": (REQ, "str", False),
    "report_format": (REQ, "int", False),
    "configuration_version": (REQ, "str", False),
    "start_time": (REQ, "time", False),
    "end_time": (REQ, "time", False),
    "producer_timestamp": (REQ, "time", False),
    "producer": (REQ, "str", True),
    "corrective_change": (REQ, "bool", True),
    "resources": (REQ, ("list", _RESOURCE), False),
    "noop": (REQ, "bool", True),
    "noop_pending": (REQ, "bool", True),
    "transaction_uuid": (REQ, "str", True),
    "catalog_uuid": (REQ, "str", True),
    "code_id": (REQ, "str", True),
    "job_id": (OPT, "str", True),
    "cached_catalog_status": (REQ, "str", True),
    "metrics": (REQ, ("list", _METRIC), False),
    "logs": (REQ, ("list", _LOG), False),
    "environment": (REQ, "str", False),
    "status": (REQ, "str", True),
    "type": (OPT, ("enum", ("agent", "plan")), False),
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(value: Any, kind: Any, path: str, problems: list[str], lenient: bool) -> None:
    def wrong(expected: str) -> None:
        problems.append(f"{path}: expected {expected}, got {_type_name(value)} {_short(value)}")

    if kind == "str":
        if not isinstance(value, str):
            wrong("string")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            wrong("integer")
    elif kind == "num":
        if isinstance(value, bool) or not isinstance(value, int | float):
            wrong("number")
    elif kind == "bool":
        if not isinstance(value, bool):
            wrong("boolean")
    elif kind == "time":
        if _parse_time(value, lenient=lenient) is None:
            what = "timestamp" if lenient else "ISO-8601 timestamp with zone (Z or +hh:mm)"
            wrong(what)
    elif kind == "json":
        pass  # pls/JSONable: any JSON value
    elif isinstance(kind, dict):
        if not isinstance(value, dict):
            wrong("object")
        else:
            _check_map(value, kind, path, problems, lenient)
    elif kind[0] == "list":
        if not isinstance(value, list):
            wrong("array")
        else:
            for i, item in enumerate(value):
                _check_value(item, kind[1], f"{path}[{i}]", problems, lenient)
    elif kind[0] == "enum":
        if value not in kind[1]:
            problems.append(f"{path}: expected one of {list(kind[1])}, got {_short(value)}")
    else:  # pragma: no cover
        raise AssertionError(kind)


def _check_map(
    data: dict[str, Any], schema: dict[str, Any], path: str, problems: list[str], lenient: bool
) -> None:
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in schema:
            problems.append(f"{prefix}{key}: disallowed key")
    for key, (required, kind, nullable) in schema.items():
        if key not in data:
            if required:
                problems.append(f"{prefix}{key}: missing required key")
            continue
        value = data[key]
        if value is None:
            if not nullable:
                problems.append(f"{prefix}{key}: must not be null")
            continue
        _check_value(value, kind, f"{prefix}{key}", problems, lenient)


def _schema_problems(body: Any, *, lenient_times: bool = False) -> list[str]:
    if not isinstance(body, dict):
        return [f"payload: expected a JSON object, got {_type_name(body)}"]
    problems: list[str] = []
    _check_map(body, REPORT_V8, "", problems, lenient_times)
    return problems


_PG_UUID = re.compile(r"(\{)?[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}(?(1)\})")


def _canonical_uuid(value: str) -> str:
    return str(uuidlib.UUID(hex=re.sub(r"[{}-]", "", value)))


def _nul_paths(value: Any, path: str) -> Iterable[str]:
    if isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nul_paths(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nul_paths(item, f"{path}.{key}")


def _storage_problems(body: dict[str, Any]) -> list[str]:
    """What the schema lets through but PostgreSQL refuses (scf/storage.clj add-report!*).

    Only a schema-valid body may be passed."""
    problems = []
    for key in ("transaction_uuid", "catalog_uuid"):  # munge-uuid-for-storage: a PG uuid
        value = body.get(key)
        if isinstance(value, str) and not _PG_UUID.fullmatch(value):
            problems.append(f'{key}: ERROR: invalid input syntax for type uuid: "{value}"')
    # NUL is refused in text and jsonb columns: the report row, metrics, logs and the
    # resource_events rows (event values excepted: replace-null-bytes). Resources that
    # yield no event are not stored (the resources column is off in FOSS PuppetDB).
    nul_paths: list[str] = []
    for key, value in body.items():
        if key != "resources":
            nul_paths.extend(_nul_paths(value, key))
    for i, resource in enumerate(body["resources"]):
        if not (resource["skipped"] or resource["events"]):
            continue
        for key in ("resource_type", "resource_title", "file", "containment_path"):
            nul_paths.extend(_nul_paths(resource[key], f"resources[{i}].{key}"))
        if resource["skipped"]:
            continue
        for j, event in enumerate(resource["events"]):
            for key, value in event.items():
                if key not in ("new_value", "old_value"):
                    nul_paths.extend(_nul_paths(value, f"resources[{i}].events[{j}].{key}"))
    problems.extend(f"{p}: contains NUL (\\u0000), which PostgreSQL text/jsonb refuses" for p in nul_paths)
    return problems


def validate_report_v8(body: Any, *, lenient_times: bool = False) -> list[str]:
    """Every reason PuppetDB would not store ``body`` as a ``store report`` v8 payload.

    Empty list = PuppetDB stores it. Schema problems (reports.clj
    ``report-wireformat-schema``: closed maps, required keys, exact types) come first,
    then storage problems prefixed ``storage:`` (uuid columns, NUL characters).

    ``lenient_times=False`` (default) requires ISO-8601 times with a zone, as the
    spec and PuppetDB's wire-format docs say. The real schema check
    (``pls/Timestamp``, clj-time's ``from-string``) is laxer: it also takes times
    without a zone (read as UTC) and date-only strings; pass ``lenient_times=True``
    for exactly that.
    """
    problems = _schema_problems(body, lenient_times=lenient_times)
    if problems:
        return problems
    return [f"storage: {p}" for p in _storage_problems(body)]


# --------------------------------------------------------------------------- the server


@dataclass
class ReceivedCommand:
    """One request that reached ``/pdb/cmd/v1``, whatever the answer."""

    method: str
    params: dict[str, str | list[str]]
    headers: CIMultiDict[str]
    raw: bytes
    body: Any = None  # the JSON payload (gunzipped, parsed), None if it does not parse
    status: int | None = None
    answer: Any = None  # the answer's JSON, or its text
    uuid: str | None = None
    outcome: str | None = None  # stored | duplicate | dead-letter | ignored | None (not queued)


_RECORD = web.RequestKey("fake_puppetdb_record", ReceivedCommand)


@dataclass
class _Outcome:
    kind: str  # stored | duplicate | ignored | fatal | error
    reason: str = ""


def _pr_str(value: Any) -> str:
    """Clojure pr-str, for the values PuppetDB puts in its messages."""
    if value is None:
        return "nil"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + " ".join(_pr_str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, ensure_ascii=False).encode(),
        content_type="application/json",
        charset="utf-8",
    )


def _text_response(text: str, status: int) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8")


def _invalid(command: Any, certname: Any, *reasons: str) -> web.Response:
    head = f"Command {_pr_str(command)} for certname {_pr_str(certname)} is invalid."
    return _json_response({"error": " ".join((head, *reasons))}, 400)


_JAVA_INT = re.compile(r"[+-]?\d+")
_JAVA_DOUBLE = re.compile(r"[+-]?(?:NaN|Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fFdD]?)")


def _parse_json(data: bytes) -> Any:
    """cheshire parse-stream over a UTF-8 InputStreamReader: invalid UTF-8 becomes
    U+FFFD, a BOM is not skipped, NaN/Infinity are refused, trailing text is ignored."""
    text = data.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise ValueError("empty body")

    def no_constants(name: str) -> Any:
        raise ValueError(f"non-standard JSON number {name}")

    value, _ = json.JSONDecoder(parse_constant=no_constants).raw_decode(text)
    return value


class FakePuppetDB:
    """A PuppetDB double; see the module docstring for what it checks.

    State, all public:

    - ``reports``: ``{hash: body}`` of stored ``store report`` v8 payloads.
    - ``dead_letters``: ``[(body, reason)]``, body parsed JSON (raw bytes if it did not
      parse), for every command PuppetDB would have discarded.
    - ``commands``: every :class:`ReceivedCommand`, rejected ones included.
    - ``mode``: ``"up"``, ``"starting"`` (every request: 503 text/plain
      :data:`DOWN_MESSAGE`) or ``"slow"`` (sleep ``slow_seconds`` before answering).
    - ``wait_cap``: if set, the longest a ``secondsToWaitForCompletion`` request whose
      command is discarded is held before its 503 (the real one holds S seconds).
    """

    def __init__(self, *, lenient_times: bool = False, slow_seconds: float = 5.0) -> None:
        self.lenient_times = lenient_times
        self.slow_seconds = slow_seconds
        self.wait_cap: float | None = None
        self.reports: dict[str, dict[str, Any]] = {}
        self.dead_letters: list[tuple[Any, str]] = []
        self.commands: list[ReceivedCommand] = []
        self._mode = "up"
        self._rows: dict[str, dict[str, Any]] = {}
        self._rejections: list[tuple[int, Any, str | None]] = []
        self._runner: web.AppRunner | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.ssl_context: Any = None

    # ----------------------------------------------------------------- controls

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {value!r}")
        self._mode = value

    def reject_next(
        self, n: int = 1, status: int = 400, body: Any = None, content_type: str | None = None
    ) -> None:
        """Answer the next ``n`` command POSTs with ``status`` and ``body`` without
        processing them. A dict/list body is sent as JSON, a str as text/plain; None
        gives ``{"error": ...}`` for 4xx and a text body otherwise."""
        if body is None:
            body = {"error": "rejected by FakePuppetDB.reject_next"} if status < 500 else "Server Error"
        self._rejections.extend([(status, body, content_type)] * n)

    def clear(self) -> None:
        """Forget reports, dead letters, commands and pending rejections."""
        self.reports.clear()
        self._rows.clear()
        self.dead_letters.clear()
        self.commands.clear()
        self._rejections.clear()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakePuppetDB has not been started")
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    # ----------------------------------------------------------------- serving

    def app(self) -> web.Application:
        """A fresh Application over this fake's state. If you serve it with your own
        runner (e.g. pytest-aiohttp's ``aiohttp_client``), pass ``auto_decompress=False``
        to the server so gzip bodies reach the fake untouched."""
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        app.router.add_route("*", CMD_PATH, self._handle_command)
        app.router.add_get(REPORTS_PATH, self._handle_reports_query)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: Any = None) -> str:
        """Serve on a real port; returns the base URL. Called again after :meth:`stop`
        with the defaults, it comes back on the same host, port and TLS context."""
        if self._runner is not None:
            raise RuntimeError("FakePuppetDB is already running")
        if port == 0 and self.port is not None:
            port = self.port
            if host == "127.0.0.1" and self.host is not None:
                host = self.host
            if ssl_context is None:
                ssl_context = self.ssl_context
        runner = web.AppRunner(self.app(), auto_decompress=False, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host, self.port, self.ssl_context = host, runner.addresses[0][1], ssl_context
        return self.url

    async def stop(self) -> None:
        """Close the listening socket and every connection (clients then see
        "connection refused" until :meth:`start`). State is kept."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakePuppetDB:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        record = None
        if request.path == CMD_PATH:
            raw = await request.read()
            params: dict[str, str | list[str]] = {}
            for key in request.query:
                if key not in params:
                    values = request.query.getall(key)
                    params[key] = values[0] if len(values) == 1 else list(values)
            record = ReceivedCommand(request.method, params, CIMultiDict(request.headers), raw)
            record.body = self._best_effort_body(request, raw)
            request[_RECORD] = record
            self.commands.append(record)
        if self._mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        if self._mode == "starting":  # pdb_routing.clj maint-mode-handler
            response: web.StreamResponse = _text_response(DOWN_MESSAGE, 503)
        else:
            response = await handler(request)
        if record is not None:
            record.status = response.status
            if isinstance(response, web.Response) and response.body is not None:
                text = response.text or ""
                try:
                    record.answer = json.loads(text)
                except ValueError:
                    record.answer = text
        return response

    @staticmethod
    def _best_effort_body(request: web.Request, raw: bytes) -> Any:
        try:
            return _parse_json(FakePuppetDB._decoded(request, raw))
        except (ValueError, OSError, EOFError, zlib.error):
            return None

    @staticmethod
    def _decoded(request: web.Request, raw: bytes) -> bytes:
        if request.headers.get("Content-Encoding", "") != "gzip":
            return raw
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        declared = request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) != len(raw):
            return raw  # the server stack (aiohttp auto_decompress) already gunzipped it
        raise ValueError("Content-Encoding: gzip but the body is not gzip")

    async def _handle_command(self, request: web.Request) -> web.Response:
        record = request[_RECORD]
        if self._rejections:
            status, body, content_type = self._rejections.pop(0)
            if isinstance(body, dict | list):
                return _json_response(body, status)
            return web.Response(status=status, text=str(body), content_type=content_type or "text/plain")

        # middleware order of http/command.clj command-app, outermost first
        headers = request.headers
        post = request.method == "POST"
        encoding = headers.get("Content-Encoding", "")
        if post and encoding and encoding not in SUPPORTED_ENCODINGS:
            return _text_response(f"content encoding {encoding} not supported", 415)
        content_type = headers.get("Content-Type")
        if request.method in ("POST", "PUT") and content_type is not None:
            media_type = content_type.split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                msg = (
                    f"content-type {media_type} is not a supported type for request of type "
                    f":{request.method.lower()} at {CMD_PATH}"
                )
                return _json_response({"kind": "unsupported-type", "msg": msg}, 415)
        accept = headers.get("Accept")
        if accept is not None:
            types = {t.strip() for t in accept.split(",")}
            if not types & {"*/*", "application/*", "application/json"}:
                msg = "accept header must include application/json"
                return _json_response({"kind": "not-acceptable", "msg": msg}, 406)

        params: dict[str, Any] = dict(record.params)
        payload_bytes = record.raw
        old_format = "command" not in params
        if old_format:
            params, payload_bytes, problem = self._normalize_old_format(record.raw)
            if problem is not None:
                return problem
            compressed = False
        else:
            if isinstance(params["command"], list) or isinstance(params.get("version"), list):
                return _text_response(
                    "class clojure.lang.PersistentVector cannot be cast to java.lang.CharSequence", 500
                )
            params["command"] = params["command"].replace("_", " ")
            if "version" in params and _JAVA_INT.fullmatch(params["version"]):
                as_int = int(params["version"])
                if -(2**31) <= as_int < 2**31:
                    params["version"] = as_int
            compressed = encoding == "gzip"

        problem = self._validate_params(params)
        if problem is not None:
            return problem

        wait = params.get("secondsToWaitForCompletion")
        wait_seconds = None
        if wait is not None:
            if not isinstance(wait, str) or not _JAVA_DOUBLE.fullmatch(wait.strip()):
                return _text_response(f"For input string: {_pr_str(wait)}", 500)
            wait_seconds = float(wait.strip().rstrip("fFdD").replace("Infinity", "inf"))
        if isinstance(params.get("producer-timestamp"), list):
            return _text_response("No matching method parse found taking 1 args", 500)

        command_uuid = str(uuidlib.uuid4())
        record.uuid = command_uuid
        outcome = self._process(params, payload_bytes, compressed, request)
        record.outcome = {"fatal": "dead-letter", "error": "dead-letter"}.get(outcome.kind, outcome.kind)

        if wait_seconds is None or not wait_seconds > 0:
            return _json_response({"uuid": command_uuid})
        if outcome.kind == "fatal":  # discarded without calling back: the request times out
            delay = wait_seconds if self.wait_cap is None else min(wait_seconds, self.wait_cap)
            await asyncio.sleep(delay)
            return _json_response({"uuid": command_uuid, "processed": False, "timed_out": True}, 503)
        if outcome.kind == "error":
            answer = {
                "uuid": command_uuid,
                "processed": True,
                "timed_out": False,
                "error": outcome.reason,
                "stack_trace": ["(FakePuppetDB: no stack trace)"],
            }
            return _json_response(answer, 503)
        return _json_response({"uuid": command_uuid, "processed": True, "timed_out": False})

    @staticmethod
    def _normalize_old_format(raw: bytes) -> tuple[dict[str, Any], bytes, web.Response | None]:
        """Commands POSTed without query parameters: ``{"command", "version", "payload"}``."""
        try:
            decoded = json.loads(raw.decode("utf-8"))
        except ValueError:
            decoded = {}
        if not isinstance(decoded, dict):
            decoded = {}
        command, version, payload = decoded.get("command"), decoded.get("version"), decoded.get("payload")
        certname = payload.get("certname") if isinstance(payload, dict) else None
        old = "Command was submitted without query parameters (old format)."
        # Clojure truthiness: only nil and false are false
        if not all(v is not None and v is not False for v in (command, version, payload)):
            need = "The request body must be a JSON map with required keys: command, version, payload."
            return {}, b"", _invalid(command, certname, old, need)
        if not isinstance(payload, dict):
            return {}, b"", _invalid(command, certname, old, "The payload value must be a JSON map.")
        params = {k: v for k, v in decoded.items() if k != "payload"}
        params["certname"] = certname
        params = {k: v for k, v in params.items() if v is not None}
        return params, json.dumps(payload).encode(), None

    @staticmethod
    def _validate_params(params: dict[str, Any]) -> web.Response | None:
        """http/command.clj wrap-with-request-params-validation."""
        command, version, certname = params.get("command"), params.get("version"), params.get("certname")
        missing = sorted(set(REQUIRED_PARAMS) - set(params))
        if missing:
            return _invalid(
                command, certname, f"Command is missing required parameters: {', '.join(missing)}."
            )
        unknown = sorted(set(params) - VALID_PARAMS)
        if unknown:
            return _invalid(command, certname, f"Command has invalid parameters: {', '.join(unknown)}.")
        if not isinstance(certname, str) or not certname.strip():
            return _invalid(command, certname, "Certname must be a non-empty string.")
        minimum = MIN_SUPPORTED.get(command) if isinstance(command, str) else None
        if minimum is None:
            return _invalid(command, certname, f"Command must be one of: {', '.join(KNOWN_COMMANDS)}.")
        if isinstance(version, bool) or not isinstance(version, int):
            return _invalid(command, certname, "Version must be a valid integer.")
        if version < minimum:
            return _invalid(
                command,
                certname,
                f"Version {version} of command {_pr_str(command)} is retired.",
                f"The minimum supported version is {minimum}.",
            )
        return None

    def _process(
        self, params: dict[str, Any], data: bytes, compressed: bool, request: web.Request
    ) -> _Outcome:
        """What PuppetDB's command processor does with a queued command."""
        body: Any = data
        try:
            if compressed:
                data = self._decoded(request, data)
            body = _parse_json(data)
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            return self._discard(body, "fatal", f"Error parsing command: {exc}")
        command, version = params["command"], params["version"]
        if command != "store report":
            return _Outcome("ignored")  # accepted; the fake only processes reports

        if version != 8:
            if version in (5, 6, 7):
                return self._discard(
                    body, "error", f"FakePuppetDB only implements store report v8, not v{version}"
                )
            problems = _schema_problems(body, lenient_times=self.lenient_times)  # prep validates as v8
            if problems:
                return self._discard(body, "fatal", "; ".join(problems))
            reason = f'java.lang.IllegalArgumentException: No matching clause: ["store report" {version}]'
            return self._discard(body, "error", reason)

        problems = _schema_problems(body, lenient_times=self.lenient_times)
        if problems:
            return self._discard(body, "fatal", "; ".join(problems))
        problems = _storage_problems(body)
        if problems:
            return self._discard(body, "error", "org.postgresql.util.PSQLException: " + "; ".join(problems))

        digest = report_hash(body)
        if digest in self.reports:
            return _Outcome("duplicate")
        self.reports[digest] = body
        self._rows[digest] = self._query_row(digest, body)
        return _Outcome("stored")

    def _discard(self, body: Any, kind: str, reason: str) -> _Outcome:
        self.dead_letters.append((body, reason))
        return _Outcome(kind, reason)

    @staticmethod
    def _query_row(digest: str, body: dict[str, Any]) -> dict[str, Any]:
        def uuid_out(value: str | None) -> str | None:
            return None if value is None else _canonical_uuid(value)

        href = f"{REPORTS_PATH}/{digest}"
        return {
            "hash": digest,
            "certname": body["certname"],
            "puppet_version": body["puppet_version"],
            "report_format": body["report_format"],
            "configuration_version": body["configuration_version"],
            "start_time": normalize_time(body["start_time"]),
            "end_time": normalize_time(body["end_time"]),
            "producer_timestamp": normalize_time(body["producer_timestamp"]),
            "producer": body["producer"],
            "receive_time": _format_millis(int(datetime.now(UTC).timestamp() * 1000)),
            "transaction_uuid": uuid_out(body["transaction_uuid"]),
            "catalog_uuid": uuid_out(body["catalog_uuid"]),
            "code_id": body["code_id"],
            "job_id": body.get("job_id"),
            "cached_catalog_status": body["cached_catalog_status"],
            "noop": body["noop"],
            "noop_pending": body["noop_pending"],
            "corrective_change": None,  # FOSS PuppetDB does not store it
            "environment": body["environment"],
            "status": body["status"],
            "type": body.get("type", "agent"),
            "metrics": {"href": f"{href}/metrics", "data": body["metrics"]},
            "logs": {"href": f"{href}/logs", "data": body["logs"]},
            "resource_events": {"href": f"{href}/events"},
        }

    async def _handle_reports_query(self, request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - QUERY_PARAMS)
        if unknown:
            return _text_response(f"Unsupported query parameter '{unknown[0]}'", 400)
        rows = list(self._rows.values())
        latest: dict[str, str] = {}
        for row in sorted(rows, key=lambda r: r["producer_timestamp"]):
            latest[row["certname"]] = row["hash"]
        rows = [{**row, "latest_report?": latest[row["certname"]] == row["hash"]} for row in rows]
        text = request.query.get("query")
        if text:
            try:
                query = json.loads(text)
            except ValueError as exc:
                return _text_response(f"Malformed JSON for query: {text} ({exc})", 400)
            try:
                _matches(query, {})  # validate even when nothing is stored
                rows = [row for row in rows if _matches(query, row)]
            except ValueError as exc:
                return _text_response(str(exc), 400)
        try:
            offset = int(request.query.get("offset", "0"))
            limit = int(request.query["limit"]) if "limit" in request.query else None
        except ValueError:
            return _text_response("Illegal value for limit/offset: must be an integer", 400)
        rows = rows[offset:] if limit is None else rows[offset : offset + limit]
        return _json_response(rows)


QUERYABLE = (
    "hash", "certname", "puppet_version", "report_format", "configuration_version", "start_time",
    "end_time", "producer_timestamp", "producer", "receive_time", "transaction_uuid", "catalog_uuid",
    "code_id", "job_id", "cached_catalog_status", "noop", "noop_pending", "corrective_change",
    "environment", "status", "type", "latest_report?",
)  # fmt: skip


def _matches(query: Any, row: dict[str, Any]) -> bool:
    """The subset of the v4 query AST the fake understands; raises ValueError (-> 400)
    for anything else, even when there is no row to test."""
    if not isinstance(query, list) or not query:
        raise ValueError(f"Invalid query: {json.dumps(query)}")
    op = query[0]
    if op in ("and", "or"):
        results = [_matches(q, row) for q in query[1:]]
        return all(results) if op == "and" else any(results)
    if op == "not" and len(query) == 2:
        return not _matches(query[1], row)
    if op in ("=", "~", "null?") and len(query) == 3:
        field_name, value = query[1], query[2]
        if field_name not in QUERYABLE:
            known = ", ".join(QUERYABLE)
            raise ValueError(
                f"'{field_name}' is not a queryable object for reports. Known queryable objects are [{known}]"
            )
        actual = row.get(field_name)
        if op == "null?":
            return (actual is None) == bool(value)
        if op == "~":
            return isinstance(actual, str) and re.search(str(value), actual) is not None
        if field_name.endswith("_time") or field_name == "producer_timestamp":
            return actual == normalize_time(value)
        return actual == value
    raise ValueError(f"'{op}' is not a supported operator (FakePuppetDB knows =, ~, null?, and, or, not)")
