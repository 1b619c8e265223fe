"""The simulator's second origin: result files as an object store serves them — signed, expiring URLs, XML
errors, real PNG/JPEG bytes of the task's aspect ratio — with the download faults (HTML pages, truncation)."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import TYPE_CHECKING

from aiohttp import web

from .. import schema
from .images import render, result_type, size_for, variant_of, with_c2pa, with_trailer

if TYPE_CHECKING:
    from .server import Simulator


class ResultFiles:
    """GET /r/{task_id}/{n}.{ext} on the files origin, for the tasks of one Simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.sim.stats.file_requests += 1
        if "Authorization" in request.headers:
            self.sim.stats.file_auth_headers += 1
        task = self.sim.task(request.match_info["task_id"])
        name = request.match_info["name"]
        stem, _, ext = name.partition(".")
        if (
            task is None
            or task.state(time.time()) != "success"
            or not stem.isdigit()
            or not 1 <= int(stem) <= self.sim.config.results_per_task
        ):
            return _xml_error(404, "NoSuchKey", "The specified key does not exist.")
        if self.sim.config.url_ttl is not None:
            expires = request.query.get("expires", "")
            signature = request.query.get("sig", "")
            if not hmac.compare_digest(signature, self.sim.sign(task.task_id, name, expires)):
                return _xml_error(403, "SignatureDoesNotMatch", "The request signature does not match.")
            if not expires.isdigit() or int(expires) < time.time():
                return _xml_error(403, "AccessDenied", "Request has expired")

        data = task.body["input"]
        fmt = result_type(task.body, self.sim.cards)
        lie = self.sim.config.wrong_extension  # the URL and the Content-Type say PNG, whatever the bytes are
        if ("png" if lie else schema.EXTENSIONS[fmt]) != ext:
            return _xml_error(404, "NoSuchKey", "The specified key does not exist.")
        width, height = size_for(task.body, self.sim.config.image_scale, self.sim.cards)
        quality = int(data.get("compression_quality", 90))
        variant = variant_of(f"{data['prompt']}|{data.get('seed')}|{stem}")
        content = await asyncio.to_thread(render, width, height, fmt, quality, variant)
        if self.sim.config.c2pa and fmt == "png":
            content = with_c2pa(content)
        if self.sim.config.png_trailer != "none" and fmt == "png":
            content = with_trailer(content, self.sim.config.png_trailer)

        if self.sim.config.html_rate and self.sim.rng.random() < self.sim.config.html_rate:
            page = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(body=page, content_type="text/html")
        response = web.StreamResponse(
            headers={
                "Content-Type": "image/png" if fmt == "png" or lie else f"image/{fmt}",
                "Cache-Control": "private, max-age=3600",
            }
        )
        response.content_length = len(content)
        truncate = self.sim.config.truncate_rate and self.sim.rng.random() < self.sim.config.truncate_rate
        try:
            await response.prepare(request)
            if truncate:
                await response.write(content[: len(content) // 2])
                self.sim.stats.file_bytes += len(content) // 2
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # the client sees the body end early
            chunk = 256 * 1024
            for start in range(0, len(content), chunk):
                await response.write(content[start : start + chunk])
                self.sim.stats.file_bytes += len(content[start : start + chunk])
            await response.write_eof()
        except ConnectionResetError:
            raise asyncio.CancelledError from None  # the client went away: nothing to answer, nothing to log
        return response


def _xml_error(status: int, code: str, message: str) -> web.Response:
    """Result hosts are object stores: their errors are small XML documents, not the API's JSON."""
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=body, content_type="application/xml")
