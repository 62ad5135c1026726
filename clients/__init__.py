"""Clients: the Python client library, the towerserve command line and the load-test harness."""
