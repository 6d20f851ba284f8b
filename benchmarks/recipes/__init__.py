"""The recipes that reproduce the shipped weights and their model cards."""
