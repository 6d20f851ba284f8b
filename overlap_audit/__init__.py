"""overlap-audit: how much of a reported accuracy comes from test examples already in the pretraining data.

The public API lives in the submodules (``overlap_audit.api``, ``overlap_audit.stats.overlap``, ...); nothing is
imported or loaded here beyond the version string.
"""

__version__ = "0.2.0"
