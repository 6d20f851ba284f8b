"""Overlap statistics: the per-dataset tests and intervals (``overlap``), simulated power and error rates
(``power``)."""
