"""rerank-gateway: every rerank wire format in, any configured provider out."""

__version__ = "0.1.0"
