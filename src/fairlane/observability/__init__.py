"""Observability for fairlane: the metrics catalog, Grafana dashboards and Prometheus alert rules.

``catalog`` owns every metric name and label; ``dashboards/*.json`` and ``alerts/*.yml`` are
package data that use only those names (``tests/unit/test_observability_catalog.py`` guards it).
"""
