"""LlamaIndex's `CohereRerank` against a base URL, run by .venv-clients' python (see requirements.txt).

Reads {"base_url", "api_key", "query", "documents", "top_n"} as JSON on stdin and prints what the
reranker returned, [{"index", "score"}, ...] in its order, as JSON on stdout: the test that started
the gateway checks it. The model is left at LlamaIndex's default, as a user who only sets
`base_url` leaves it. Imports nothing of the gateway's: only the client library is installed here.
"""

from __future__ import annotations

import json
import sys

from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank


def main() -> None:
    call = json.load(sys.stdin)
    # One attempt: a gateway 5xx shows at once, not after tenacity's back-off of 4-10 s a retry.
    reranker = CohereRerank(api_key=call["api_key"], base_url=call["base_url"], top_n=call["top_n"], max_retries=1)
    nodes = [NodeWithScore(node=TextNode(text=text, id_=str(index))) for index, text in enumerate(call["documents"])]
    ranked = reranker.postprocess_nodes(nodes, query_str=call["query"])
    json.dump([{"index": int(node.node.node_id), "score": node.score} for node in ranked], sys.stdout)


if __name__ == "__main__":
    main()
