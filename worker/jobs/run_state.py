"""The backfill run's state machine, written down once.

Every status change in the database (worker/db/checkpoints.py) is guarded by
this table in its SQL (`WHERE status = ANY(<allowed sources>)`), so a change
that lands late (a process shutting down after an operator's `cancel`) cannot
overwrite a status it must not:

    target                  allowed from
    running                 interrupted, failed          (resume: a claim or a page commit)
    succeeded               running                      (every slice done, no failed rows)
    finished_with_failures  running                      (every slice done, some rows failed)
    interrupted             running                      (stopped, or the database went away)
    failed                  running                      (an unexpected error)
    cancelled               running, interrupted, failed (an operator's `reenrich cancel`)

`--restart` starts a run over from any status, and only while no live process
works on it (checked in the same statement): it resets cursors and counts.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FINISHED_WITH_FAILURES = "finished_with_failures"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = RunStatus
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.RUNNING: frozenset({S.INTERRUPTED, S.FAILED}),
    S.SUCCEEDED: frozenset({S.RUNNING}),
    S.FINISHED_WITH_FAILURES: frozenset({S.RUNNING}),
    S.INTERRUPTED: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.RUNNING}),
    S.CANCELLED: frozenset({S.RUNNING, S.INTERRUPTED, S.FAILED}),
}
# A run that reached its end; a plain `backfill` does not run it again.
FINISHED = frozenset({S.SUCCEEDED, S.FINISHED_WITH_FAILURES, S.CANCELLED})
# Unfinished: a plain `backfill` with the same filters resumes it.
RESUMABLE = frozenset({S.RUNNING, S.INTERRUPTED, S.FAILED})


def allowed_from(target: RunStatus) -> list[str]:
    """The statuses a run may move to `target` from, as SQL parameters."""
    return sorted(s.value for s in TRANSITIONS[target])


def can_move(source: RunStatus, target: RunStatus) -> bool:
    return source in TRANSITIONS[target]
