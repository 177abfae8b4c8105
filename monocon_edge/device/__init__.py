"""The torch-free device runtime: artifact format and checks (``artifact``), embedder and index (``runtime``),
int8 embedding codes (``embedding_codes``) and error types (``errors``).

Imports only the standard library, numpy, onnxruntime, tokenizers (text) and Pillow (images): copy this folder
to a device as it is. Importing this package imports none of its modules.
"""
