"""Vector search: Qdrant collections, the /v1/vector API and retrieval-augmented chat.

config.py      collections.yaml -> validated settings, and where Qdrant lives (URL or local path)
store.py       the Qdrant layer: create/verify collections, upsert, delete, filtered search
embedder.py    texts -> vectors through the gateway's router (the catalogue's embedding model)
service.py     documents in, hits out: validation, embedding and the store together
api.py         the FastAPI router mounted on the gateway (/v1/vector/...)
rag.py         the LiteLLM hooks that add retrieved passages to chat requests and return the sources
bench.py       upsert throughput and search latency of the store (`make bench`)
"""
