"""Observability as code: scrape targets, Prometheus and Alertmanager configuration, Grafana dashboards.

The alert rules and their promtool tests live in prometheus/; this package
derives everything that depends on the catalogue or the environment.
"""
