"""`monocon-edge analyze`: compare finished runs side by side (tables, clustermaps, d_eff over training,
Recall@k, optional t-SNE). ``compute`` holds the pure computations; plotting is in ``plots``."""
from .pipeline import AnalysisResult, analyze, check_runs

__all__ = ["AnalysisResult", "analyze", "check_runs"]
