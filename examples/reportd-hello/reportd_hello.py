"""A minimal reportd plugin: a processor, a setting and a route (see reportd_plugins)."""

import structlog

from reportd import Processor, Setting, as_str, hookimpl, json_response, require_permission

log = structlog.get_logger("reportd_hello")


@hookimpl
def reportd_declare_settings():
    return {"hello": {"greeting": Setting("hello", as_str, "what to say")}}


@hookimpl
def reportd_register_processors():
    return [Hello]


class Hello(Processor):
    name = "hello"
    seen = 0

    async def process(self, report):
        greeting = self.context.plugin_settings("hello")["greeting"]
        Hello.seen += 1
        log.info("hello", greeting=greeting, certname=report.certname, report_id=report.id)


@hookimpl
def reportd_add_routes(app, context):
    async def count(request):
        await require_permission(request, "view_reports")
        return json_response({"seen": Hello.seen})

    app.router.add_get("/hello/count", count)
