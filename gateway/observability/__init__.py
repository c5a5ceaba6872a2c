"""What the gateway tells operators about itself.

    metrics.py       GatewayMetrics: Prometheus counters, histograms and gauges; render() for /metrics
    logs.py          JSON / text log formatting with redaction; the fields of a request's log line
    status_page.py   GET /status: an HTML page rendered from a snapshot
"""
