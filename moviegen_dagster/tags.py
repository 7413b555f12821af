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


def dagster_priority(priority: int) -> int:
    """API priority 1 is most urgent; Dagster dequeues higher dagster/priority first."""
    return 10 - priority
