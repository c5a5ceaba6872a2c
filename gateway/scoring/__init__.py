"""Who scores a request: the service (cache, single flight, merge) and the router's plan.

    service.py      rerank(request) -> result: model resolution, score cache, merge
    job.py          Job: one request's distinct pairs, keys, scores and result on their way
    coordinator.py  FlightCoordinator: single flight for a request's missing pairs, in process
                    and across processes (leases)
    flights.py      Flights: concurrent requests missing one pair share one upstream call
    router.py       Router: plan, walk, and the lexical last resort or the one error
    plan.py         Planner: the ordered steps (own providers, fallback models, panic rule,
                    rate-limit wait) and why a provider is passed over
    walk.py         PlanWalk: the steps called in turn, hedged, until one answers
    kept.py         what one walk's calls answered: kept for the cache when a step fails part-way,
                    and only the unanswered pairs for the next step of the same model and group

May import: quality, resilience, providers, budget, cache, redisio, observability, config, models,
errors. Not web, process, runtime or app: no HTTP in here.
"""
