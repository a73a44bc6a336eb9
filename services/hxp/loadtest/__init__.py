"""Load tests: Locust traffic per catalogue model and the verdict against the catalogue's targets.

The Locust entry point is loadtests/locustfile.py; the traffic it sends is
loadtests/traffic.yaml; the targets are the catalogue's active profile.
"""
