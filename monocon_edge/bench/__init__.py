"""``monocon-edge bench``: accuracy, size, latency, throughput, memory and search cost of exported artifacts.

Modules, one job each: ``targets`` (runs/artifacts → cached artifacts per dims), ``evaldata`` (the run's real
evaluation data), ``accuracy`` (Recall@k, 5-NN / Spearman and index costs from artifact embeddings),
``timing`` (warm-up + timed calls), ``memory`` / ``probe`` (peak RSS of a torch-free child process),
``reference`` (the unfolded PyTorch model, eager), ``runner`` (the whole benchmark), ``output`` (JSON,
Markdown, plot). This package file stays import-free: ``probe`` runs in a child that must not import torch.
"""
