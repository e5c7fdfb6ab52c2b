"""reportd's built-in plugins, and the guide to writing your own.

Built-ins live here and ship in the wheel as ``reportd_plugins``; they use only
the public API below, exactly as a third-party plugin does.

Writing a plugin
================

A plugin is a Python module with functions decorated by ``reportd.hookimpl``.
The hooks, when they are called and what they return are documented in
:mod:`reportd.hookspecs`. The public API is the ``reportd`` module itself, and
only it: import from ``reportd``, never from its submodules (they change without
notice). Its docstring lists what it offers: the hooks and processors, the report
model, settings and their parsers, what HTTP routes need (permissions, JSON
answers and errors, query-parameter parsers), periodic work, what commands need
(``run_with_context``, tables, JSON lines, progress) and jobs' runs. The built-in
plugins here are held to that by an import-linter contract in ``make test``.

Most plugins are **processors**: a :class:`reportd.Processor` subclass gets
every accepted report, in the background, at least once (or only those its
``wants(report)`` returns True for, decided when the report is accepted). Delivery state is
kept per processor: if ``process`` raises, that report is retried with
backoff for your processor alone, and dead-lettered after
``[reportd] max_attempts`` (or at once on ``PermanentError``). Make processing
idempotent; keep the event loop free. Every processor gets the same report object,
*sealed*: it and its parts refuse changes (``FrozenInstanceError``, ``TypeError``;
its lists are tuples), so no processor can change what another sees; copy what you
want to change.

A minimal plugin, ``reportd_hello.py`` (this is ``examples/reportd-hello``,
which the test suite installs with pip and runs in a real daemon)::

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

Install it so reportd finds it, in one of three ways:

* an entry point in your package's ``pyproject.toml``::

      [project.entry-points.reportd]
      hello = "reportd_hello"

* or drop the file into a directory listed in ``[reportd] plugin_paths``;
* (built-ins only) a name in ``reportd.plugin_manager.BUILTIN_PLUGINS``.

Then enable the processor and configure it in the INI file::

    [reportd]
    processors = store, hello

    [plugin:hello]
    greeting = bonjour

``reportd plugins`` lists what is loaded and from where, and
``reportd check-config`` validates your section (unknown keys and unparsable
values are errors). Block a plugin with ``[reportd] disabled_plugins``.
"""
