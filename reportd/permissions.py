"""The permissions an API token or a client certificate can hold (checked by reportd.auth)."""

UPLOAD = "upload_config_reports"
VIEW_REPORTS = "view_reports"
PERMISSIONS = frozenset(
    {UPLOAD, VIEW_REPORTS, "view_jobs", "edit_jobs", "view_schedules", "edit_schedules", "admin"}
)
