"""Benchmarks: workloads measured side by side with the database floor (pymongo on the same database)."""
