"""reportd/openapi.json against the code: the same routes, the same limits and enums, served as is.

The routes come from the application itself, as tests/ingest/test_route_walk.py
enumerates them: a route added without its description (or a description left
behind by a removed route) fails here. What each route answers is checked
against the document by a live daemon in tests/test_schemathesis.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from reportd_plugins import email, store
from reportd_plugins.email_periods import FREQUENCIES

import reportd
from reportd.app import create_app
from reportd.auth import PERMISSIONS
from reportd.config import load_config_string
from reportd.formats import chef as chef_format
from reportd.formats import foreman as foreman_format
from reportd.formats import puppet as puppet_format
from reportd.formats.fields import INT64_MAX, INT64_MIN, certname_problem
from reportd.ingest import ENCODINGS
from reportd.ingest.chef import PROTOCOL_HEADER, PROTOCOL_VERSION
from reportd.jobs import api as jobs_api
from reportd.jobs.tracker import MAX_ID_DIGITS
from reportd.model import FORMATS
from reportd.plugin_manager import get_plugin_manager
from reportd.status import RUN_STATUSES
from reportd.storage import jobs as job_storage
from reportd.storage.schedules import EDITABLE
from tests.support import ini_for

DOCUMENT_PATH = Path(reportd.__file__).with_name("openapi.json")
DOCUMENT = json.loads(DOCUMENT_PATH.read_bytes())
SCHEMAS = DOCUMENT["components"]["schemas"]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _template(path: str) -> str:
    """A path with its parameters unnamed: aiohttp's ``{name}`` and the document's may differ."""
    return re.sub(r"\{[^{}/]+\}", "{}", path)


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    config = load_config_string(ini_for(tmp_path, processors="store, metrics"))
    pm = get_plugin_manager(load_entrypoints=False, plugin_paths=config.plugin_paths)
    routes = set()
    for route in create_app(config, pm).router.routes():
        if route.method == "HEAD":  # every GET answers HEAD too, as the document says once
            continue
        info = route.resource.get_info() if route.resource else {}
        routes.add((route.method, _template(info.get("formatter") or info.get("path"))))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), _template(path))
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS
    }


def operations():
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield f"{method.upper()} {path}", path, operation


def operation(operation_id: str) -> dict:
    (found,) = [op for _, _, op in operations() if op["operationId"] == operation_id]
    return found


def parameter(operation_id: str, name: str) -> dict:
    for entry in operation(operation_id).get("parameters", ()):
        if "$ref" in entry:
            entry = DOCUMENT["components"]["parameters"][entry["$ref"].rsplit("/", 1)[1]]
        if entry["name"] == name:
            return entry["schema"]
    raise AssertionError(f"{operation_id} has no parameter {name}")


def test_every_route_is_described_and_every_description_is_a_route(tmp_path):
    routes, described = app_routes(tmp_path), documented_routes()
    assert routes - described == set(), "routes without a description in reportd/openapi.json"
    assert described - routes == set(), "described in reportd/openapi.json, but no such route"
    assert len(routes) >= 35


def test_every_operation_has_an_id_its_path_parameters_and_a_described_answer_per_status():
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))
    for label, path, op in operations():
        declared = set()
        for entry in op.get("parameters", ()):
            if "$ref" in entry:
                entry = DOCUMENT["components"]["parameters"][entry["$ref"].rsplit("/", 1)[1]]
            if entry["in"] == "path":
                declared.add(entry["name"])
        assert declared == set(re.findall(r"\{([^{}/]+)\}", path)), label
        assert "500" in op["responses"], f"{label}: any route may fail (the error middleware's 500)"
        assert op.get("summary"), label


def test_the_document_is_openapi_3_1_and_versioned_as_the_package():
    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["info"]["version"] == reportd.__version__


def test_security_schemes_are_the_credentials_reportd_reads():
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert {(s["type"], s.get("scheme") or s.get("name")) for s in schemes.values()} == {
        ("http", "bearer"), ("http", "basic"), ("apiKey", "X-Authentication"),
        ("apiKey", "X-Data-Collector-Token"), ("mutualTLS", None),
    }  # fmt: skip
    description = DOCUMENT["info"]["description"]
    assert all(f"`{permission}`" in description for permission in PERMISSIONS)


def test_enums_and_limits_are_the_codes_own():
    assert SCHEMAS["ReportItem"]["properties"]["status"]["enum"] == list(RUN_STATUSES)
    assert SCHEMAS["Node"]["properties"]["status"]["enum"] == list(RUN_STATUSES)
    assert parameter("listReports", "status")["enum"] == list(RUN_STATUSES)
    assert parameter("listNodes", "status")["enum"] == list(RUN_STATUSES)
    assert SCHEMAS["ReportItem"]["properties"]["format"]["enum"] == list(FORMATS)
    assert parameter("listReports", "limit")["maximum"] == store.MAX_LIMIT
    for name in ("organization_id", "location_id"):
        assert parameter("listReports", name)["minimum"] == INT64_MIN
        assert parameter("listReports", name)["maximum"] == INT64_MAX

    report = SCHEMAS["PuppetReport"]["properties"]["report_format"]
    assert (report["minimum"], report["maximum"]) == (puppet_format.MIN_FORMAT, puppet_format.MAX_FORMAT)
    assert parameter("putPuppetReport", "Content-Encoding")["enum"] == sorted(
        ENCODINGS, key=["gzip", "x-gzip", "deflate", "identity", ""].index
    )
    foreman_report = SCHEMAS["ForemanUpload"]["anyOf"][0]["properties"]["config_report"]["properties"]
    assert list(foreman_report["status"]["properties"]) == list(foreman_format.COUNTERS)
    assert foreman_report["logs"]["items"]["properties"]["log"]["properties"]["level"]["enum"] == list(
        foreman_format.LEVELS
    )
    protocol = DOCUMENT["components"]["parameters"]["ChefProtocol"]
    assert (protocol["name"], protocol["schema"]["const"]) == (PROTOCOL_HEADER, PROTOCOL_VERSION)
    assert SCHEMAS["ChefRunEnd"]["properties"]["status"]["enum"] == list(chef_format.RUN_STATUSES)
    assert set(SCHEMAS["ChefRunEnd"]["required"]) == set(chef_format.END_FIELDS)
    collector = SCHEMAS["DataCollectorMessage"]["properties"]["resources"]["items"]["properties"]["status"]
    assert collector["enum"] == list(chef_format.RESOURCE_STATUSES)

    job_states = {getattr(job_storage, name) for name in dir(job_storage) if name.startswith("JOB_")}
    job_states -= {job_storage.JOB_ORDER_COLUMNS}
    assert set(SCHEMAS["Job"]["properties"]["state"]["enum"]) == job_states
    assert list(SCHEMAS["Job"]["properties"]["node_states"]["properties"]) == list(job_storage.NODE_STATES)
    assert parameter("listJobs", "order_by")["enum"] == list(job_storage.JOB_ORDER_COLUMNS)
    assert parameter("listJobs", "type")["enum"] == list(jobs_api.JOB_TYPES)
    assert parameter("getJob", "job_id")["maximum"] == 10**MAX_ID_DIGITS - 1
    assert set(SCHEMAS["DeployCommand"]["properties"]) == jobs_api.DEPLOY_KEYS

    attrs = SCHEMAS["ScheduleAttrs"]["properties"]
    assert list(attrs) == list(EDITABLE)
    assert attrs["schedule"]["enum"] == list(FREQUENCIES)
    assert attrs["type"]["enum"] == list(email.TYPES)
    assert attrs["send_via"]["enum"] == list(email.SEND_VIA)
    assert attrs["name"]["maxLength"] == email.MAX_NAME
    assert parameter("listSchedules", "page")["maximum"] == email.MAX_PAGE
    assert parameter("listSchedules", "page_size")["maximum"] == email.MAX_PAGE_SIZE


@pytest.mark.parametrize(
    "name",
    ["web01.example.com", "a", "x" * 255, "x" * 256, "Upper.example.com", "a/b", ".", "..", "...", "sp ace",
     "tab\there", "caf\u00e9", "", "under_score-and~tilde"],
)  # fmt: skip
def test_the_certname_pattern_is_puppets_rule(name):
    pattern = SCHEMAS["Certname"]["pattern"]
    assert bool(re.fullmatch(pattern, name)) == (certname_problem(name) is None)


async def test_the_document_is_served_as_shipped_to_anyone(aiohttp_client, make_app):
    client = await aiohttp_client(make_app("anonymous_networks =\n"))
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.read() == DOCUMENT_PATH.read_bytes()
    assert (await client.get("/api/v1/reports")).status == 403  # while the API itself is closed
