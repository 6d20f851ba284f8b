"""``python -m overlap_audit.cli``."""

from . import main

main()
