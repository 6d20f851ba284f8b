"""The real-overlap development set: its builder, scorer and the verification measurement (README.md)."""
