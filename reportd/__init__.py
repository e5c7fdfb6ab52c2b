"""reportd: receive configuration-management run reports, hand them to processors.

This module is the plugin API: a plugin imports from ``reportd`` only, never
from its submodules (``make test`` checks the built-in plugins for that with
import-linter). What is here:

* the hooks and processors: :data:`hookimpl`, :class:`Processor`,
  :class:`PermanentError`, :class:`PluginContext` (configuration, storage,
  queue figures, state shared by a plugin's parts);
* the report model: :class:`Report` and its parts, :func:`rebuild_report`,
  :class:`ReportError`, :func:`is_yaml`, run statuses and :func:`change_kind`,
  :func:`is_stale`;
* settings: :class:`Setting` and the value parsers (``as_*``, :func:`one_of`);
* HTTP routes: :func:`require_permission`, the permissions (:data:`PERMISSIONS`), :func:`json_response`,
  :func:`api_error`, :func:`json_error`, :func:`public_base_url`, and the
  query-parameter parsers :func:`query_integer` and :func:`query_timestamp` (and
  :data:`INT64_MAX`, the largest id);
* background work: :func:`every` and :func:`drain`;
* commands (``reportd_register_commands``): :func:`run_with_context`, :func:`plugin_context`,
  :func:`echo_table`, :func:`echo_json_lines`, :func:`iso_time`, :func:`progress`;
* jobs: :class:`JobRun` and :class:`JobRunError`, for plugins that start jobs' runs;
* the store's and the schedules' records (:class:`Storage` and the rest below),
  while their tables are still the core's.
"""

from reportd.auth import PERMISSIONS, VIEW_REPORTS
from reportd.cli.common import plugin_context, run_with_context
from reportd.context import PluginContext
from reportd.formats import ReportError
from reportd.formats.puppet import is_yaml
from reportd.hookspecs import hookimpl
from reportd.jobs import JobRun, JobRunError
from reportd.model import Event, Log, Report, ResourceStatus
from reportd.output import echo_json_lines, echo_table, iso_time, progress
from reportd.parsing import rebuild as rebuild_report
from reportd.periodic import drain, every
from reportd.processor import PermanentError, Processor
from reportd.query import INT64_MAX
from reportd.query import integer as query_integer
from reportd.query import timestamp as query_timestamp
from reportd.settings import (
    ConfigError,
    Setting,
    as_bool,
    as_duration,
    as_int,
    as_list,
    as_networks,
    as_path,
    as_positive_int,
    as_size,
    as_str,
    as_url,
    as_urls,
    one_of,
)
from reportd.status import CHANGED, FAILED, NOOP_PENDING, RUN_STATUSES, UNCHANGED, change_kind, is_stale
from reportd.storage import NodeRow, ReportQuery, Storage, StoredReport
from reportd.storage.schedules import (
    EDITABLE,
    RUN_EMPTY,
    RUN_FAILED,
    RUN_PENDING,
    RUN_SENT,
    RunClaim,
    Schedule,
    ScheduleQuery,
    ScheduleRun,
)
from reportd.version import __version__
from reportd.web import api_error, json_error, json_response, public_base_url, require_permission

__all__ = [
    "CHANGED",
    "EDITABLE",
    "FAILED",
    "INT64_MAX",
    "NOOP_PENDING",
    "PERMISSIONS",
    "RUN_EMPTY",
    "RUN_FAILED",
    "RUN_PENDING",
    "RUN_SENT",
    "RUN_STATUSES",
    "UNCHANGED",
    "VIEW_REPORTS",
    "ConfigError",
    "Event",
    "JobRun",
    "JobRunError",
    "Log",
    "NodeRow",
    "PermanentError",
    "PluginContext",
    "Processor",
    "Report",
    "ReportError",
    "ReportQuery",
    "ResourceStatus",
    "RunClaim",
    "Schedule",
    "ScheduleQuery",
    "ScheduleRun",
    "Setting",
    "Storage",
    "StoredReport",
    "__version__",
    "api_error",
    "as_bool",
    "as_duration",
    "as_int",
    "as_list",
    "as_networks",
    "as_path",
    "as_positive_int",
    "as_size",
    "as_str",
    "as_url",
    "as_urls",
    "change_kind",
    "drain",
    "echo_json_lines",
    "echo_table",
    "every",
    "hookimpl",
    "is_stale",
    "is_yaml",
    "iso_time",
    "json_error",
    "json_response",
    "one_of",
    "plugin_context",
    "progress",
    "public_base_url",
    "query_integer",
    "query_timestamp",
    "rebuild_report",
    "require_permission",
    "run_with_context",
]
