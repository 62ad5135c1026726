"""Kept for clients/loadtest.py's import: the tables live in towerserve.server.tables."""

from towerserve.server.tables import SUMMARY_METRICS, format_table, metrics_table

__all__ = ["SUMMARY_METRICS", "format_table", "metrics_table"]
