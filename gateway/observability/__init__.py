"""What the gateway tells operators about itself.

    metrics.py       GatewayMetrics: Prometheus counters, histograms and gauges; render() for /metrics
    history.py       MinuteHistory: the last hour per minute in this process, for /status and /status.json
    logs.py          JSON / text log formatting with redaction; the fields of a request's log line
    trace.py         the provider attempts of the request being served, for its log line
    tracing.py       OpenTelemetry spans and `traceparent` upstream (optional extra); a no-op when off

May import: nothing of the gateway's but itself: every layer reports through it.
"""
