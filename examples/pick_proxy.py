"""An OpenAI-compatible forwarding proxy that routes with epp's Pick API, no Envoy:
each POST asks epp for a pod, is sent there with httpx, and its end is reported to epp.

    python examples/pick_proxy.py --epp 127.0.0.1:9002 --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
from aiohttp import web

from epp.client import PickClient, PickError

HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection"}


async def forward(request: web.Request) -> web.StreamResponse:
    epp, http = request.app[EPP], request.app[HTTP]
    body, start = await request.read(), time.monotonic()
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    try:
        picked = await epp.pick(body, headers=headers)
    except PickError as error:  # epp's own answer, as a client behind Envoy gets it
        return web.Response(
            status=error.status, body=error.openai_body(), content_type="application/json"
        )
    status, streamed, done, first, size, kept = 0, False, False, None, 0, bytearray()
    try:
        url = f"http://{picked.endpoint}{request.path_qs}"
        async with http.stream("POST", url, content=picked.body or body, headers=headers) as got:
            status, streamed = (
                got.status_code,
                "event-stream" in got.headers.get("content-type", ""),
            )
            copied = {k: v for k, v in got.headers.items() if k.lower() not in HOP_BY_HOP}
            out = web.StreamResponse(status=status, headers={**copied, **picked.response_headers})
            await out.prepare(request)
            async for chunk in got.aiter_raw():
                first, size = first or time.monotonic() - start, size + len(chunk)
                kept += b"" if streamed else chunk  # a JSON body's usage, read at its end
                await out.write(chunk)
            await out.write_eof()
            done = True
            return out
    finally:  # always: until then epp counts the request on its pod
        try:
            usage = json.loads(kept)["usage"] if done else {}
        except (ValueError, KeyError, TypeError):
            usage = {}
        await asyncio.shield(
            epp.finish(picked.request_id, status=status, completed=done, streamed=streamed,
                       prompt_tokens=usage.get("prompt_tokens", 0),
                       completion_tokens=usage.get("completion_tokens", 0),
                       time_to_first_token_s=first, response_bytes=size))  # fmt: skip


EPP, HTTP = web.AppKey("epp", PickClient), web.AppKey("http", httpx.AsyncClient)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epp", default="127.0.0.1:9002", help="epp's gRPC (ext_proc) address")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    async with PickClient(args.epp) as app[EPP], httpx.AsyncClient(timeout=None) as app[HTTP]:
        app.router.add_post("/{path:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        print(f"proxy on http://127.0.0.1:{args.port} -> epp {args.epp}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
