"""Schemathesis hooks for tests/test_schemathesis.py (loaded by the ``st`` process through
``SCHEMATHESIS_HOOKS``): what Schemathesis cannot know about reportd's clients by itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import schemathesis

# A Puppet agent with preferred_serialization_format=pson sends JSON under this type.
schemathesis.serializer.alias("text/pson", "application/json")


@schemathesis.hook
def before_call(context, case, kwargs):
    """Send the ``//api/...`` routes with their double slash (chef-handler-foreman's URLs):
    Schemathesis joins every path to the base URL without its leading slashes."""
    if case.operation.path.startswith("//"):
        url = case.operation.schema.build_request_url(case, case.operation.base_url)
        parts = urlsplit(url)
        kwargs["url"] = urlunsplit(parts._replace(path="//" + parts.path.lstrip("/")))
