"""Who scores a request: the service (cache, single flight, merge) and the router's plan.

Glossary (one meaning each; the quality package's terms are in gateway.quality):

    slot          one distinct (query, passage) pair of a request, numbered once (UniquePairs);
                  a request position maps onto a slot, repeats share one
    plan table    PlanTable: each model's routes, built per config generation and quality-board
                  version, never per request
    route         one provider of one model in the table: client, cache group, scale map, verdict
    step          a route as one request may call it: whole or missing pairs, panic or not
    live checks   what a request applies to the routes it reads: key and instruction, rate
                  limit, breaker (the guarded call asks breaker and rate limit again, and the budget)
    flight        concurrent requests missing one pair share one upstream call (flights.py)
    round         one call of the router for some of a request's slots (scorer.py)

One request flows one way: service -> coordinator -> scorer -> router -> plan/walk; each stage
returns what the one above needs (a Round, a Filling), none calls back up or writes a shared object.

    service.py      rerank(request) -> result: model resolution, score cache, merge
    job.py          Job: what one request asks (model, cache group, slots, keys), read by every
                    stage and written by none; UniquePairs: its distinct pairs, numbered once
    coordinator.py  FlightCoordinator: single flight for a request's missing pairs, in process
                    and across processes (leases); returns a Filling
    scorer.py       Scorer: one upstream round for some slots, the router's answer cached
    flights.py      Flights: concurrent requests missing one pair share one upstream call
    router.py       Router: plan, walk, and the lexical last resort or the one error
    table.py        PlanTable: routes per model, built when the config or the quality board changes
    plan.py         Planner: the ordered steps (own providers, fallback models, panic rule,
                    rate-limit wait) from the table and the live checks, and why a provider is passed over
    walk.py         PlanWalk: the steps called in turn, hedged, until one answers
    kept.py         what one walk's calls answered: kept for the cache when a step fails part-way,
                    and only the unanswered pairs for the next step of the same model and group

May import: quality, resilience, providers, budget, cache, redisio, observability, config, models,
errors. Not web, process, runtime or app: no HTTP in here.
"""
