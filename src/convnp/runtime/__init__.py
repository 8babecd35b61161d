"""Execution machinery at the edge: parallel execution and process tuning, called explicitly."""
