"""The HTTP layer: what turns sockets' requests into service calls and errors into one JSON body.

    edge.py            the middleware every request passes: request id, errors, log line, metrics
    rerank.py          the rerank endpoints (body read and checked, dialect decode/encode) and /v1/models
    request_limits.py  the configured size limits on a decoded request
    ops.py             /healthz, /readyz, /metrics, /status, /openapi.json
    status_page.py     GET /status: an HTML page rendered from a snapshot
    admin.py           /admin/*: reload and spend, behind the admin key
    openapi.py         the OpenAPI document of every endpoint

May import: runtime and everything below it (scoring, quality, resilience, budget, cache, dialects,
observability, config, models, errors). Nothing below imports this package.
"""
