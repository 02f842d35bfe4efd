"""Prometheus metrics and health endpoints of the worker and sink processes."""
