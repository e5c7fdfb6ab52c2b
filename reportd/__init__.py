"""reportd: receive configuration-management run reports, hand them to processors."""

from reportd.context import PluginContext
from reportd.hookspecs import hookimpl
from reportd.model import Event, Log, Report, ResourceStatus
from reportd.pipeline import rebuild as rebuild_report
from reportd.processor import PermanentError, Processor
from reportd.settings import Setting
from reportd.version import __version__

__all__ = [
    "Event",
    "Log",
    "PermanentError",
    "PluginContext",
    "Processor",
    "Report",
    "ResourceStatus",
    "Setting",
    "__version__",
    "hookimpl",
    "rebuild_report",
    "require_permission",
]


async def require_permission(request, permission: str, *, forbidden=None):
    """Authenticate ``request`` and raise a 403 unless it has ``permission``.

    Returns the caller's :class:`reportd.auth.Identity`. For plugin routes.
    ``forbidden(permission)``, when given, makes the 403 to raise (an API whose
    error bodies are not reportd's own).
    """
    from reportd.web import require_permission as _require

    return await _require(request, permission, forbidden=forbidden)
