"""`rerank-gateway eval`: how well each provider of a model ranks a labelled set, and at what cost.

    beir.py     load_beir: corpus, queries, qrels and optional candidates in the BEIR layout
    bm25.py     Bm25Index: the first stage, BM25 over the whole corpus
    metrics.py  precision, NDCG, MRR, recall of one ranked list against its qrels
    run.py      evaluate: every usable provider scores the candidates, no cache; the report
    table.py    the report as a table for a terminal
    html.py     the report as one self-contained HTML file with inline SVG charts (`eval --html`)
"""
