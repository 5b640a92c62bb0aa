"""The admin listener: Prometheus /metrics and /healthz (the control API joins it in /v1/...)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from proxy.server import ProxyServer

PROXY_KEY = web.AppKey("proxy", ProxyServer)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    body = generate_latest(registry)
    # CONTENT_TYPE_LATEST carries its own charset parameter; aiohttp wants it in the header.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    ctx = proxy.ctx
    draining = ctx is not None and ctx.draining
    status = 503 if draining else 200
    return web.json_response(
        {"status": "draining" if draining else "ok", "version": proxy.table.version},
        status=status,
    )


def build_admin_app(proxy: ProxyServer) -> web.Application:
    app = web.Application()
    app[PROXY_KEY] = proxy
    app[REGISTRY_KEY] = proxy.metrics.registry()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
