"""The jobs that run the contract: import, backfill, follow, the shared write step, pacing,
progress, the run state machine, dedup.
"""
