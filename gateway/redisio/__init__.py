"""Talking to Redis, shared by the score cache and the spend ledger.

    client.py    the redis-py client (one server or a Cluster), URLs, warm-up, ping
    commands.py  batches of commands, one round trip each: direct connections or the cluster client
    outage.py    when to leave a failing Redis alone for a moment, and when to say so

May import: nothing of the gateway's but itself. The cache, the ledger and config (Redis URLs) build on it.
"""
