"""A stand-in for ``puppet agent --onetime --no-daemonize --job_id N``: one report, sent as an agent does.

    python tests/support/jobs_agent.py CERTNAME JOB_ID URL [--log FILE] [--hold SECONDS]

The run's outcome is picked by the certname, so one command template serves a
whole job: ``fail*`` sends a failed run (the catalog could not be compiled),
``broken*`` prints a few lines and exits 3 without a report (a node that cannot
be reached), anything else sends a changed run. ``--log`` appends
``start|end CERTNAME MONOTONIC`` lines (to check concurrency), ``--hold`` waits
that long before reporting, ``--wait-for FILE`` until FILE exists, ``--pid-file``
writes the agent's pid, ``--noise N`` first prints one line of N characters.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import urllib.request
import uuid
from pathlib import Path

PUPPET = Path(__file__).resolve().parents[1] / "data" / "puppet"


def make_report(certname: str, job_id: str, *, failed: bool) -> bytes:
    sample = "agent-catalog-failure.json" if failed else "agent-changes.json"
    data = json.loads((PUPPET / sample).read_text())
    data["host"] = certname
    data["job_id"] = job_id
    data["transaction_uuid"] = str(uuid.uuid4())
    # the run started its total time ago and has just ended, as when an agent sends its report
    total = next(value for key, _, value in data["metrics"]["time"]["values"] if key == "total")
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=total + 0.01)
    data["time"] = started.isoformat()
    return json.dumps(data).encode()


def log(path: str | None, what: str, certname: str) -> None:
    if path:
        with open(path, "a") as file:
            file.write(f"{what} {certname} {time.monotonic()}\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("certname")
    parser.add_argument("job_id")
    parser.add_argument("url")
    parser.add_argument("--log")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--wait-for")
    parser.add_argument("--pid-file")
    parser.add_argument("--noise", type=int, default=0)
    args = parser.parse_args()
    log(args.log, "start", args.certname)
    if args.pid_file:
        Path(args.pid_file).write_text(str(os.getpid()))
    if args.noise:
        print("x" * args.noise, flush=True)
    try:
        if args.certname.startswith("broken"):
            print(f"ssh: connect to host {args.certname} port 22: Connection refused")
            print("puppet agent did not run")
            return 3
        time.sleep(args.hold)
        if args.wait_for:
            while not Path(args.wait_for).exists():
                time.sleep(0.02)
        body = make_report(args.certname, args.job_id, failed=args.certname.startswith("fail"))
        request = urllib.request.Request(
            f"{args.url}/puppet/v3/report/{args.certname}?environment=production",
            data=body,
            method="PUT",
            headers={"Content-Type": "application/json", "X-Puppet-Version": "7.23.0"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            print(f"Notice: report sent: {response.status} {response.read().decode()}")
        return 0
    finally:
        log(args.log, "end", args.certname)


if __name__ == "__main__":
    sys.exit(main())
