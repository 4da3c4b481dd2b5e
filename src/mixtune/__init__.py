"""mixtune: two-stage domain instruction tuning with closed-loop task mixing and release gates."""

__version__ = "0.1.0"
