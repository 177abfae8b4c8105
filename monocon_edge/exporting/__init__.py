"""Export a finished run into an artifact: fold the head and PCA (``fold``), ONNX (``onnx_export``), int8
(``quantize``), parity and accuracy gates (``gates``, ``gate_inputs``), the sentence-transformers folder
(``st_format``), the artifact writer (``build``) and re-checking an artifact (``verify``)."""
