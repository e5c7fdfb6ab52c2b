"""The store's commands: ``reportd reports`` lists stored reports, ``reports show ID`` shows one.

Registered by the store plugin (``reportd_register_commands``), written against
the public plugin API as a third party's commands would be.
"""

from __future__ import annotations

import sys

import click
import orjson

from reportd import (
    RUN_STATUSES,
    ReportQuery,
    echo_json_lines,
    echo_table,
    iso_time,
    rebuild_report,
    run_with_context,
)


@click.group(invoke_without_command=True, short_help="List stored reports; show one.")
@click.option("--certname", help="Only this node's reports.")
@click.option("--status", type=click.Choice(RUN_STATUSES), help="Only runs of this status.")
@click.option("--environment", help="Only runs in this environment.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def reports(ctx: click.Context, certname, status, environment, limit, as_json) -> None:
    """List stored reports, newest run first; `reports show ID` shows one."""
    if ctx.invoked_subcommand is not None:
        return
    query = ReportQuery(certname=certname, status=status, environment=environment, limit=limit)
    rows = run_with_context(lambda context: context.storage.query_reports(query))
    if as_json:
        echo_json_lines(
            {"id": row.id, "certname": row.certname, "status": row.status, "environment": row.environment,
             "run_time": iso_time(row.run_time), "summary": row.summary}
            for row in rows
        )  # fmt: skip
        return
    filters = ", ".join(f"{k} {v}" for k, v in (("certname", certname), ("status", status),
                                                 ("environment", environment)) if v)  # fmt: skip
    echo_table(
        ("ID", "RUN TIME", "STATUS", "ENVIRONMENT", "CERTNAME"),
        [(row.id, iso_time(row.run_time), row.status, row.environment, row.certname) for row in rows],
        empty=f"no reports{' with ' + filters if filters else ''}",
    )


@reports.command("show", short_help="Show one stored report.")
@click.argument("report_id", type=int)
@click.option("--raw", is_flag=True, help="The body exactly as received.")
def reports_show(report_id: int, raw: bool) -> None:
    """Show one stored report (normalized JSON, or the original body)."""
    row = run_with_context(lambda context: context.storage.get_report(report_id))
    if row is None:
        raise click.ClickException(f"no report {report_id}")
    if raw:
        sys.stdout.buffer.write(row.body)
        return
    report = rebuild_report(row.id, row.envelope, row.body)
    click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
