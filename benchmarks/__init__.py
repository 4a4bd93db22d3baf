"""`make bench`: syncengine measured against the limits the API allows (see benchmarks/__main__.py)."""
