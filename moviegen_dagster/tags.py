"""Run tags MovieGen sets on every task run."""

TASK_ID = "moviegen/task_id"
PROJECT_ID = "moviegen/project_id"
TASK_TYPE = "moviegen/task_type"
WORKER_TYPE = "moviegen/worker_type"
CELERY_QUEUE = "dagster-celery/queue"
PRIORITY = "dagster/priority"
PARTITION = "dagster/partition"
MAX_RETRIES = "dagster/max_retries"
MAX_RUNTIME = "dagster/max_runtime"
WILL_RETRY = "dagster/will_retry"
RETRY_NUMBER = "dagster/retry_number"
PARENT_RUN_ID = "dagster/parent_run_id"
DAGSTER_BACKFILL = "dagster/backfill"
# Set on runs MovieGen did not launch itself (UI materializations, backfills, schedules).
PARENT_TASK_ID = "moviegen/parent_task_id"
BACKFILL_ID = "moviegen/backfill_id"
# Dagster's per-run switch for retrying runs whose step failed; see step_retry.py.
RETRY_ON_STEP_FAILURE = "dagster/retry_on_asset_or_op_failure"
# Set on a run that run monitoring stopped for exceeding dagster/max_runtime (its value).
TIMED_OUT = "moviegen/timed_out"

# Backfill runs queue below every interactive task (dagster_priority() spans 0..9).
BACKFILL_PRIORITY = -1


def dagster_priority(priority: int) -> int:
    """API priority 1 is most urgent; Dagster dequeues higher dagster/priority first."""
    return 10 - priority
