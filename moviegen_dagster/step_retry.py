"""A media step that fails on an unreachable database, not on its task, runs again.

Run retries (`dagster/max_retries`) cover lost workers but not step failures
(`retry_on_asset_or_op_failure: false`): a step failure is normally the task's own error (bad
input, generation failed), and repeating it would only fail again. One kind of step failure is
not the task's: the database going away while Dagster prepares the step (it reads the inputs'
data versions before the op runs) or while the op records its attempt. Connection patience
(pg_storage.py) covers an outage that has begun; a query cut off by the server shutting down
still fails. This failure hook marks such a run for Dagster's own run retries, before the run's
failure is recorded, so the daemon re-executes it within `dagster/max_retries`; the run
coordinator clears the mark on the retry, so its own step failures are task errors again.
"""

from __future__ import annotations

import dagster as dg

from moviegen_dagster import tags

# Exceptions (by class name, anywhere in the cause chain) meaning the database was unreachable.
DATABASE_LOST = frozenset(
    {
        "OperationalError",  # psycopg, psycopg2 and SQLAlchemy's wrapper
        "InterfaceError",
        "DagsterPostgresException",
        "PoolTimeout",
    }
)


def database_lost(exc: BaseException | None) -> BaseException | None:
    """The database error that made a step fail, unless the op turned it into a task error."""
    if exc is None or isinstance(exc, dg.Failure):
        return None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(cls.__name__ in DATABASE_LOST for cls in type(exc).__mro__):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@dg.failure_hook(name="retry_when_database_lost")
def retry_when_database_lost(context: dg.HookContext) -> None:
    """Let Dagster's run retries re-execute a step that failed on an unreachable database."""
    cause = database_lost(context.op_exception)
    if cause is None:
        return
    context.instance.add_run_tags(context.run_id, {tags.RETRY_ON_STEP_FAILURE: "true"})
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    context.log.warning(
        f"step failed on an unreachable database ({type(cause).__name__}: {first_line}); "
        "the run will be retried"
    )
