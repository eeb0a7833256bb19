"""Observability: every Prometheus metric of mlgate is defined in ``metrics.py``."""
