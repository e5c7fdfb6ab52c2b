"""The ceiling for bench/ingest.py: a bare aiohttp server for the Puppet report route.

It reads the body, parses it with orjson and answers what reportd answers, with no
validation, no durability and no processing, so the gap to reportd is the price of
what reportd does per report. It logs nothing per request, like a quiet daemon.

    python bench/bare_server.py --listen 127.0.0.1:8140
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

MAX_BODY = 64 * 1024 * 1024  # reportd's default limit, so 2,000-resource reports fit
ANSWER = orjson.dumps(["store"])


async def put_report(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(body=ANSWER, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_put("/puppet/v3/report/{certname}", put_report)
    app.router.add_get("/ready", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8140", metavar="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    web.run_app(create_app(), host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
