"""Who scores a request: the service (cache, single flight, merge) and the router's plan.

    service.py   rerank(request) -> result: model resolution, score cache, single flight, merge
    flights.py   single flight: concurrent requests missing one pair share one upstream call
    router.py    one ordered plan per request (own providers, fallback models, panic rule, lexical
                 last resort), walked with hedging until a step answers
    kept.py      what one walk's calls answered: kept for the cache when a step fails part-way,
                 and only the unanswered pairs for the next step of the same model and group

May import: quality, resilience, providers, budget, cache, redisio, observability, config, models,
errors. Not web, process, runtime or app: no HTTP in here.
"""
