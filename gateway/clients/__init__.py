"""Clients and teams: who sends a rerank request, what it may use, and what it may spend.

    Client       one key's holder, resolved for a config generation: its models, its and its
                 team's budgets (ledger limits, reserved with the providers'), rates and caps
    ClientBook   a generation's clients by the SHA-256 of their keys: `identify` turns an
                 Authorization header into a Client, or a 401
    Rate         requests or documents per minute of a client or a team, held across the fleet
                 through Redis (RedisRates), else per process (MemoryRates)
    Cap          requests in flight at once of a client or a team, in this process (InFlight)
    ClientStore  clients created through the admin API: shared through Redis, else this process's

Budgets are not kept here: a client's and its team's are ledger scopes (gateway.budget), held
with the provider's before every upstream call, so every guarantee of the ledger holds for them.
"""

from gateway.clients.book import Client, ClientBook
from gateway.clients.in_flight import Cap, InFlight
from gateway.clients.rates import MemoryRates, Rate, RateLimiter, RateRefusal, RedisRates
from gateway.clients.store import (
    ClientRecord,
    ClientStore,
    MemoryClientStore,
    RedisClientStore,
    StoreUnavailable,
)

__all__ = ["Cap", "Client", "ClientBook", "ClientRecord", "ClientStore", "InFlight", "MemoryClientStore", "MemoryRates",
           "Rate", "RateLimiter", "RateRefusal", "RedisClientStore", "RedisRates", "StoreUnavailable"]
