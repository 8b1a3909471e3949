"""Replicas sharing one rollout through Redis: the state store, the lease, the reports."""
