"""Experiment configs: one dataclass per experiment, holding every default."""
