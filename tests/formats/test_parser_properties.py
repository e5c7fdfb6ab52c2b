"""Property-based tests of the input boundary (Hypothesis).

For every wire-format parser and every query-parameter reader: any input gives
either a valid result or the documented error, never another exception; and a
report that parses is one every built-in processor can take (the store's rows,
PuppetDB's command body, /metrics' series, the job tracker's records).
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reportd_plugins.metrics import CATEGORIES, NodeSeries, _compact
from reportd_plugins.puppetdb import store_report_v8
from reportd_plugins.store import _decode_cursor, stored_report

from reportd import query
from reportd.formats import Envelope, ReportError, parse
from reportd.formats.decode import LARGE_JSON_BYTES, json_data
from reportd.formats.fields import INT64_MAX, INT64_MIN
from reportd.jobs.tracker import node_outcome, resource_events
from reportd.model import Report, utcnow
from reportd.storage.rows import report_row
from tests.support import sample

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(PROPERTY, max_examples=400)
RUN_ID = "550e4500-e22b-4ad4-a716-446659876500"
ENVELOPES = {
    "puppet-json": Envelope("puppet", "application/json", utcnow(), "lab-agent.example.test", "production"),
    "puppet-yaml": Envelope("puppet", "application/x-yaml", utcnow()),
    "foreman": Envelope("foreman", "application/json", utcnow(), params={"location_id": 3}),
    "chef-reporting": Envelope(
        "chef", "application/json", utcnow(), "web1.example.test",
        params={"protocol": "reporting", "organization": "acme", "run_id": RUN_ID},
    ),
    "chef-data-collector": Envelope("chef", "application/json", utcnow(), params={"protocol": "data_collector"}),
}  # fmt: skip


def every_processor_takes(report: Report) -> None:
    """What each built-in processor computes from a report, done for real (no I/O)."""
    report.id = 1
    row = report_row(stored_report(report))
    for value in row:
        if type(value) is int:
            assert INT64_MIN <= value <= INT64_MAX
        if type(value) is str:
            assert "\x00" not in value
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE r ({', '.join(f'c{i}' for i in range(len(row)))})")
    db.execute(f"INSERT INTO r VALUES ({', '.join('?' * len(row))})", row)
    orjson.dumps(
        store_report_v8(report, producer=None, include_unchanged=True, default_environment="production")
    )
    series = NodeSeries(
        certname=report.certname, environment=report.environment or "", run_time=report.run_time.timestamp(),
        received_at=report.received_at.timestamp(), run_end=report.run_time.timestamp(), status=report.status,
        change_kind=None, transaction_completed=report.transaction_completed,
        cached_catalog_status=report.cached_catalog_status, metrics=_compact(report.metrics), stale_after=60.0,
    )  # fmt: skip
    series.render(CATEGORIES)
    orjson.dumps(node_outcome(report, 81).metrics)
    orjson.dumps(resource_events(report))
    orjson.loads(report.to_json())


def _assert_java_numbers(value: Any) -> None:
    if type(value) is int:
        assert INT64_MIN <= value <= INT64_MAX
    elif isinstance(value, dict):
        for item in value.values():
            _assert_java_numbers(item)
    elif isinstance(value, list):
        for item in value:
            _assert_java_numbers(item)


def parse_or_refuse(body: bytes, envelope: Envelope) -> Report | None:
    try:
        report = parse(body, envelope)
    except ReportError as error:
        assert error.message
        return None
    every_processor_takes(report)
    return report


# -- any bytes ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ENVELOPES)
@PROPERTY
@given(body=st.binary(max_size=2000))
def test_any_bytes_parse_or_are_refused(name, body):
    parse_or_refuse(body, ENVELOPES[name])


# -- a real report with any value anywhere -----------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, -(2**63), -1, 0])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


def _paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a document a value can be replaced."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document[:3]):
            found += _paths(value, (*prefix, index))
    return found


def _keys(document: Any) -> set[str]:
    if isinstance(document, dict):
        return set(document).union(*(_keys(v) for v in document.values()))
    if isinstance(document, list):
        return set().union(*(_keys(v) for v in document))
    return set()


def _replace_key(document: Any, key: str, value: Any) -> Any:
    """``document`` with the value of every ``key``, at any depth, replaced."""
    if isinstance(document, dict):
        return {k: value if k == key else _replace_key(v, key, value) for k, v in document.items()}
    if isinstance(document, list):
        return [_replace_key(v, key, value) for v in document]
    return document


def _replace(document: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = document.copy()
    copy[path[0]] = _replace(document[path[0]], path[1:], value)
    return copy


PUPPET = orjson.loads(sample("agent-changes.json"))
PUPPET_PATHS = _paths(PUPPET)
FOREMAN = {
    "config_report": {
        "host": "web1.example.test", "reported_at": "2026-11-23 10:00:00 UTC",
        "status": {"applied": 1, "restarted": 0, "failed": 0, "failed_restarts": 0, "skipped": 0, "pending": 0},
        "metrics": {"time": {"total": 1.5}, "resources": {"total": 3}},
        "logs": [{"log": {"level": "notice", "sources": {"source": "Puppet"}, "messages": {"message": "hi"}}}],
        "reporter": "puppet",
    }
}  # fmt: skip
CHEF_END = {
    "action": "end", "status": "success", "start_time": "2026-11-23 12:00:00 +0200",
    "end_time": "2026-11-23 12:00:30 +0200", "run_list": '["recipe[base]"]', "total_res_count": "1",
    "resources": [{"type": "service", "name": "nginx", "duration": "250", "before": {"running": False},
                   "after": {"running": True}, "result": "restart", "delta": "", "cookbook_name": "web"}],
    "data": {"exception": {"class": "RuntimeError", "message": "boom"}},
}  # fmt: skip
CHEF_CONVERGE = {
    "message_type": "run_converge", "node_name": "web1.example.test", "run_id": RUN_ID, "status": "failure",
    "organization_name": "acme", "start_time": "2026-11-23T10:00:00Z", "end_time": "2026-11-23T10:00:30Z",
    "resources": [{"type": "file", "name": "/etc/motd", "status": "failed", "duration": "5", "before": {},
                   "after": {"content": "hi"}, "result": "create", "error_message": "no space"}],
    "run_list": ["recipe[base]"], "policy_group": "prod", "error": {"class": "Chef::Error", "message": "x"},
}  # fmt: skip
DOCUMENTS = {
    "puppet-json": (PUPPET, PUPPET_PATHS),
    "puppet-yaml": (PUPPET, PUPPET_PATHS),
    "foreman": (FOREMAN, _paths(FOREMAN)),
    "chef-reporting": (CHEF_END, _paths(CHEF_END)),
    "chef-data-collector": (CHEF_CONVERGE, _paths(CHEF_CONVERGE)),
}
KEYS = {name: sorted(_keys(document)) for name, (document, _) in DOCUMENTS.items()}


@pytest.mark.parametrize("name", DOCUMENTS)
@MANY
@given(data=st.data())
def test_a_real_report_with_any_value_anywhere_parses_or_is_refused(name, data):
    document, paths = DOCUMENTS[name]
    value = data.draw(json_values)
    if data.draw(st.booleans()):  # one place
        mutated = _replace(document, data.draw(st.sampled_from(paths)), value)
    else:  # a field, wherever it occurs
        mutated = _replace_key(document, data.draw(st.sampled_from(KEYS[name])), value)
    if name == "puppet-yaml":
        body = b"--- !ruby/object:Puppet::Transaction::Report\n" + yaml.safe_dump(mutated).encode()
    else:
        body = orjson.dumps(mutated)
    parse_or_refuse(body, ENVELOPES[name])


def test_the_unchanged_documents_parse():
    for name, (document, _) in DOCUMENTS.items():
        body = orjson.dumps(document)
        if name == "puppet-yaml":
            body = b"--- !ruby/object:Puppet::Transaction::Report\n" + yaml.safe_dump(document).encode()
        assert parse_or_refuse(body, ENVELOPES[name]) is not None, name


@PROPERTY
@given(value=st.one_of(st.floats(), st.integers(), st.text(max_size=30)))
def test_yaml_scalars_anywhere_parse_or_are_refused(value):
    mutated = _replace(PUPPET, ("metrics", "time", "values", 0, 2), value)
    body = b"--- !ruby/object:Puppet::Transaction::Report\n" + yaml.safe_dump(mutated).encode()
    report = parse_or_refuse(body, ENVELOPES["puppet-yaml"])
    if report is not None:
        assert all(math.isfinite(v) for values in report.metrics.values() for v in values.values())


# -- query parameters ----------------------------------------------------------
@PROPERTY
@given(raw=st.text(max_size=40))
def test_query_integers_are_64_bit_or_refused(raw):
    try:
        number = query.integer(raw)
    except ValueError as error:
        assert "an integer from" in str(error)
        return
    assert (INT64_MIN <= number <= INT64_MAX and str(number) == raw.lstrip("0").replace("-0", "-")) or raw


@PROPERTY
@given(
    raw=st.text(max_size=40) | st.from_regex(r"[0-9]{4,6}-[0-9]{2}-[0-9]{2}T[0-9:]{8}[+-][0-9]{2}:[0-9]{2}")
)
def test_query_times_are_finite_or_refused(raw):
    try:
        seconds = query.timestamp(raw)
    except ValueError:
        return
    assert math.isfinite(seconds)


@PROPERTY
@given(raw=st.text(max_size=60) | st.builds(lambda v: __import__("base64").urlsafe_b64encode(orjson.dumps(v))
                                             .decode().rstrip("="), json_values))  # fmt: skip
def test_report_cursors_decode_or_are_400(raw):
    try:
        decoded = _decode_cursor(raw)
    except web.HTTPException as error:
        assert error.status == 400
        return
    if decoded is not None:
        run_time, report_id = decoded
        assert math.isfinite(run_time) and 0 <= report_id <= INT64_MAX


# -- the two JSON decoders agree -------------------------------------------------
_PAST_INLINE = b" " * (LARGE_JSON_BYTES + 1)


@PROPERTY
@given(value=st.dictionaries(st.text(max_size=8), json_values, max_size=6) | json_values)
def test_large_bodies_decode_as_small_ones_do(value):
    body = orjson.dumps(value)
    try:
        small = json_data(body)
    except ReportError:  # a NUL somewhere: refused by both
        with pytest.raises(ReportError):
            json_data(body + _PAST_INLINE)
        return
    assert json_data(body + _PAST_INLINE) == small == value


@PROPERTY
@given(text=st.text(alphabet='{}[]":,0123456789.eE+-truefalsnul \\u\t\n', max_size=60))
def test_large_and_small_bodies_fail_alike(text):
    body = text.encode()
    outcomes = []
    for candidate in (body, body + _PAST_INLINE):
        try:
            outcomes.append(("ok", json_data(candidate)))
        except ReportError:
            outcomes.append(("refused", None))
    assert outcomes[0] == outcomes[1]
