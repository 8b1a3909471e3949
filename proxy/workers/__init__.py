"""Several processes on one host sharing the listener: a supervisor and its workers."""
