"""Talking to Redis, shared by the score cache and the spend ledger.

    client.py    the redis-py client of one server, URLs (a Cluster's, and each node's), warm-up, ping
    commands.py  the Commands protocol: batches, one round trip each; which way for which URL; scripts
    direct.py    commands to one server over redis-py connections, without its command path
    cluster.py   commands to a Cluster: per node, a node's failure its own (not redis-py's cluster client)
    outage.py    when to leave a failing Redis (or one node) alone for a moment, and when to say so

May import: nothing of the gateway's but itself. The cache, the ledger and config (Redis URLs) build on it.
"""
