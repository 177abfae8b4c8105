"""Server-side retrieval on FAISS (``pip install monocon-edge[server]``). Never imported by the device runtime."""
