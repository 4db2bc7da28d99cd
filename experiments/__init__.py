"""Experiment scripts: ``python -m experiments.NAME --help``."""
