"""`rerank-gateway eval`: how well each provider of a model ranks a labelled set, and at what cost.

    beir.py       load_beir: corpus, queries, qrels and optional candidates in the BEIR layout
    bm25.py       Bm25Index: the first stage, BM25 over the whole corpus
    metrics.py    precision, NDCG, MRR, recall of one ranked list against its qrels
    run.py        evaluate: every usable provider scores the candidates, no cache; the report
    recommend.py  recommend: the cheapest fallback order within an NDCG margin of the best
    table.py      the report as a table for a terminal, with the recommended `fallback = [...]` line
    html.py       the report as one self-contained HTML file with inline SVG charts (`eval --html`)
"""
