"""Prometheus metrics read from PostgreSQL at scrape time.

Everything is derived from the `moviegen` tables when scraped, so every API process answers
the same numbers and nothing is lost on restart. Labels are bounded sets (task type, status,
priority, error code, worker type): never project or task ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from moviegen_dagster.settings import WORKER_TYPE_BY_TASK

# Task run time from start to terminal state, seconds (images take seconds, scenes an hour).
DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# Webhook delivery lag, from the terminal event to the accepted delivery, seconds.
LAG_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)
# Workers silent for longer than a day are history, not capacity.
OFFLINE_HORIZON = "24 hours"


def _bounds(buckets: Sequence[float]) -> str:
    return "ARRAY[" + ", ".join(repr(float(b)) for b in buckets) + "]::float8[]"


# Counters kept by triggers as tasks end and callbacks are delivered, so a scrape reads a few
# small rows instead of aggregating every task ever run. Histogram buckets are fixed here:
# changing DURATION_BUCKETS or LAG_BUCKETS needs a migration that rebuilds these rows.
STATS_MIGRATION_SQL = f"""
CREATE TABLE moviegen.task_outcome_stats (
    task_type    text NOT NULL,
    outcome      text NOT NULL,              -- completed | failed | cancelled
    reason       text NOT NULL DEFAULT '',   -- error code of failures
    finished     bigint NOT NULL DEFAULT 0,
    timed        bigint NOT NULL DEFAULT 0,  -- of those, with a start time (histogram count)
    seconds_sum  double precision NOT NULL DEFAULT 0,
    buckets      bigint[] NOT NULL,          -- cumulative counts per DURATION_BUCKETS bound
    PRIMARY KEY (task_type, outcome, reason)
);
CREATE TABLE moviegen.task_retry_stats (
    task_type  text PRIMARY KEY,
    retries    bigint NOT NULL DEFAULT 0
);
CREATE TABLE moviegen.webhook_stats (
    outcome      text PRIMARY KEY,           -- delivered | dead
    events       bigint NOT NULL DEFAULT 0,
    seconds_sum  double precision NOT NULL DEFAULT 0,
    buckets      bigint[] NOT NULL           -- cumulative counts per LAG_BUCKETS bound
);
CREATE FUNCTION moviegen.bucket_hits(value float8, bounds float8[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_agg((value IS NOT NULL AND value <= b)::int::bigint ORDER BY i)
    FROM unnest(bounds) WITH ORDINALITY AS u(b, i)
$$;
CREATE FUNCTION moviegen.add_arrays(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT array_agg(x + y ORDER BY i) FROM unnest(a, b) WITH ORDINALITY AS u(x, y, i)
$$;
CREATE AGGREGATE moviegen.sum_buckets(bigint[]) (SFUNC = moviegen.add_arrays, STYPE = bigint[]);
CREATE FUNCTION moviegen.count_task_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    secs float8;
BEGIN
    IF NEW.status IN ('completed', 'failed', 'cancelled')
       AND (TG_OP = 'INSERT' OR OLD.status NOT IN ('completed', 'failed', 'cancelled')) THEN
        secs := EXTRACT(EPOCH FROM NEW.completed_at - NEW.started_at);
        INSERT INTO moviegen.task_outcome_stats AS s
            (task_type, outcome, reason, finished, timed, seconds_sum, buckets)
        VALUES (NEW.task_type, NEW.status,
                CASE WHEN NEW.status = 'failed'
                     THEN COALESCE(NEW.error->>'code', 'unknown') ELSE '' END,
                1, (secs IS NOT NULL)::int, COALESCE(secs, 0),
                moviegen.bucket_hits(secs, {_bounds(DURATION_BUCKETS)}))
        ON CONFLICT (task_type, outcome, reason) DO UPDATE SET
            finished = s.finished + 1,
            timed = s.timed + EXCLUDED.timed,
            seconds_sum = s.seconds_sum + EXCLUDED.seconds_sum,
            buckets = moviegen.add_arrays(s.buckets, EXCLUDED.buckets);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.attempt > OLD.attempt THEN
        INSERT INTO moviegen.task_retry_stats AS s (task_type, retries)
        VALUES (NEW.task_type, NEW.attempt - OLD.attempt)
        ON CONFLICT (task_type) DO UPDATE SET retries = s.retries + EXCLUDED.retries;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_count_outcome BEFORE INSERT OR UPDATE ON moviegen.tasks
    FOR EACH ROW EXECUTE FUNCTION moviegen.count_task_outcome();
CREATE FUNCTION moviegen.count_webhook_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    secs float8;
BEGIN
    IF NEW.delivered_at IS NOT NULL
       AND (TG_OP = 'INSERT' OR OLD.delivered_at IS NULL) THEN
        secs := EXTRACT(EPOCH FROM NEW.delivered_at - NEW.created_at);
        INSERT INTO moviegen.webhook_stats AS s (outcome, events, seconds_sum, buckets)
        VALUES ('delivered', 1, secs, moviegen.bucket_hits(secs, {_bounds(LAG_BUCKETS)}))
        ON CONFLICT (outcome) DO UPDATE SET events = s.events + 1,
            seconds_sum = s.seconds_sum + EXCLUDED.seconds_sum,
            buckets = moviegen.add_arrays(s.buckets, EXCLUDED.buckets);
    END IF;
    IF NEW.dead_at IS NOT NULL AND (TG_OP = 'INSERT' OR OLD.dead_at IS NULL) THEN
        INSERT INTO moviegen.webhook_stats AS s (outcome, events, buckets)
        VALUES ('dead', 1, '{{}}')
        ON CONFLICT (outcome) DO UPDATE SET events = s.events + 1;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER webhook_outbox_count_outcome BEFORE INSERT OR UPDATE ON moviegen.webhook_outbox
    FOR EACH ROW EXECUTE FUNCTION moviegen.count_webhook_outcome();
-- Start from what is already stored.
INSERT INTO moviegen.task_outcome_stats
    (task_type, outcome, reason, finished, timed, seconds_sum, buckets)
SELECT task_type, status,
       CASE WHEN status = 'failed' THEN COALESCE(error->>'code', 'unknown') ELSE '' END,
       count(*), count(secs), COALESCE(sum(secs), 0),
       moviegen.sum_buckets(moviegen.bucket_hits(secs, {_bounds(DURATION_BUCKETS)}))
FROM (SELECT task_type, status, error,
             EXTRACT(EPOCH FROM completed_at - started_at)::float8 AS secs
      FROM moviegen.tasks WHERE status IN ('completed', 'failed', 'cancelled')) done
GROUP BY 1, 2, 3;
INSERT INTO moviegen.task_retry_stats (task_type, retries)
SELECT task_type, sum(attempt - 1) FROM moviegen.tasks GROUP BY 1;
"""


def _histogram(
    metric: HistogramMetricFamily,
    labels: list[str],
    row: dict[str, Any],
    buckets: Sequence[float],
) -> None:
    """Add one labelled series from a row holding n, total and b0..bN."""
    series = [(repr(float(b)), float(row[f"b{i}"])) for i, b in enumerate(buckets)]
    series.append(("+Inf", float(row["n"])))
    metric.add_metric(labels, series, float(row["total"] or 0.0))


class MovieGenCollector(Collector):
    """Queue, outcome, worker and webhook metrics from one database connection."""

    def __init__(self, conn: psycopg.Connection[Any], worker_dead_after_seconds: float) -> None:
        self.conn = conn
        self.dead_after = worker_dead_after_seconds

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute(sql, args).fetchall()  # type: ignore[arg-type]

    def collect(self) -> Iterator[Metric]:
        """Read the current numbers (a handful of aggregate queries)."""
        yield from self._queue()
        yield from self._outcomes()
        yield from self._workers()
        yield from self._webhooks()

    def _queue(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "moviegen_queue_depth",
            "Tasks waiting for a worker, by priority (1 most urgent) and task type.",
            labels=["task_type", "priority", "worker_type"],
        )
        processing = GaugeMetricFamily(
            "moviegen_tasks_processing",
            "Tasks being executed now, by task type.",
            labels=["task_type"],
        )
        # Reads the partial index of open tasks only.
        running: dict[str, float] = {}
        for row in self._rows(
            "SELECT task_type, priority, status, count(*) AS n FROM moviegen.tasks "
            "WHERE status IN ('queued', 'processing') GROUP BY 1, 2, 3"
        ):
            if row["status"] == "queued":
                queued.add_metric(
                    [
                        row["task_type"],
                        str(row["priority"]),
                        WORKER_TYPE_BY_TASK.get(row["task_type"], "unknown"),
                    ],
                    float(row["n"]),
                )
            else:
                running[row["task_type"]] = running.get(row["task_type"], 0.0) + float(row["n"])
        for ttype, count in sorted(running.items()):
            processing.add_metric([ttype], count)
        yield queued
        yield processing

    def _outcomes(self) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "moviegen_task_duration_seconds",
            "Run time of finished tasks (start to terminal state), by task type and outcome.",
            labels=["task_type", "outcome"],
        )
        finished = CounterMetricFamily(
            "moviegen_tasks_finished",
            "Tasks that reached a terminal state, by task type and outcome.",
            labels=["task_type", "outcome"],
        )
        retries = CounterMetricFamily(
            "moviegen_task_retries",
            "Re-executions of tasks (automatic after a lost worker, or requested).",
            labels=["task_type"],
        )
        failures = CounterMetricFamily(
            "moviegen_task_failures",
            "Failed tasks by reason (the error code).",
            labels=["task_type", "reason"],
        )
        # Kept by the tasks trigger (STATS_MIGRATION_SQL): a few rows, whatever the history.
        hist: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self._rows(
            "SELECT task_type, outcome, reason, finished, timed, seconds_sum, buckets "
            "FROM moviegen.task_outcome_stats ORDER BY 1, 2, 3"
        ):
            key = (row["task_type"], row["outcome"])
            acc = hist.setdefault(
                key, {"finished": 0, "n": 0, "total": 0.0, "b": [0] * len(DURATION_BUCKETS)}
            )
            acc["finished"] += row["finished"]
            acc["n"] += row["timed"]
            acc["total"] += row["seconds_sum"]
            acc["b"] = [x + y for x, y in zip(acc["b"], row["buckets"], strict=True)]
            if row["outcome"] == "failed":
                failures.add_metric([row["task_type"], row["reason"]], float(row["finished"]))
        for (ttype, outcome), acc in hist.items():
            finished.add_metric([ttype, outcome], float(acc["finished"]))
            series = {"n": acc["n"], "total": acc["total"]}
            series.update({f"b{i}": v for i, v in enumerate(acc["b"])})
            _histogram(duration, [ttype, outcome], series, DURATION_BUCKETS)
        for row in self._rows(
            "SELECT task_type, retries FROM moviegen.task_retry_stats ORDER BY 1"
        ):
            retries.add_metric([row["task_type"]], float(row["retries"]))
        yield duration
        yield finished
        yield retries
        yield failures

    def _workers(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "moviegen_workers",
            "Worker slots by type and state (offline: no heartbeat within the dead-worker "
            "timeout, seen in the last day).",
            labels=["worker_type", "state"],
        )
        gpu = GaugeMetricFamily(
            "moviegen_worker_gpu_utilization",
            "Mean GPU utilisation (0-1) of live workers that report it, by worker type.",
            labels=["worker_type"],
        )
        for row in self._rows(
            f"""
            SELECT worker_type,
                   CASE WHEN last_heartbeat < now() - make_interval(secs => %s) THEN 'offline'
                        ELSE status END AS state,
                   count(*) AS n
            FROM moviegen.workers
            WHERE last_heartbeat > now() - interval '{OFFLINE_HORIZON}'
            GROUP BY 1, 2
            """,
            (self.dead_after,),
        ):
            workers.add_metric([row["worker_type"], row["state"]], float(row["n"]))
        for row in self._rows(
            "SELECT worker_type, avg(gpu_utilization) AS gpu FROM moviegen.workers "
            "WHERE last_heartbeat >= now() - make_interval(secs => %s) "
            "AND gpu_utilization IS NOT NULL GROUP BY 1",
            (self.dead_after,),
        ):
            gpu.add_metric([row["worker_type"]], float(row["gpu"]))
        yield workers
        yield gpu

    def _webhooks(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "moviegen_webhook_pending", "Callback events not delivered yet (still retried)."
        )
        oldest = GaugeMetricFamily(
            "moviegen_webhook_oldest_pending_age_seconds",
            "Age of the oldest undelivered callback event (0 when none): the current lag.",
        )
        outcomes = CounterMetricFamily(
            "moviegen_webhook_events",
            "Callback events by outcome (delivered, or dead after the retry schedule).",
            labels=["outcome"],
        )
        lag = HistogramMetricFamily(
            "moviegen_webhook_delivery_lag_seconds",
            "Time from a task's terminal event to its accepted callback delivery.",
        )
        # The partial index of due events serves the pending part.
        open_row = self._rows(
            "SELECT count(*) AS n, "
            "COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS age "
            "FROM moviegen.webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL"
        )[0]
        pending.add_metric([], float(open_row["n"]))
        oldest.add_metric([], float(open_row["age"]))
        done = {
            row["outcome"]: row
            for row in self._rows(
                "SELECT outcome, events, seconds_sum, buckets FROM moviegen.webhook_stats"
            )
        }
        delivered = done.get("delivered")
        dead = done.get("dead")
        outcomes.add_metric(["delivered"], float(delivered["events"]) if delivered else 0.0)
        outcomes.add_metric(["dead"], float(dead["events"]) if dead else 0.0)
        series: dict[str, Any] = {"n": 0, "total": 0.0}
        series.update({f"b{i}": 0 for i in range(len(LAG_BUCKETS))})
        if delivered is not None:
            series = {"n": delivered["events"], "total": delivered["seconds_sum"]}
            series.update({f"b{i}": v for i, v in enumerate(delivered["buckets"])})
        _histogram(lag, [], series, LAG_BUCKETS)
        yield pending
        yield oldest
        yield outcomes
        yield lag


def exposition(conn: psycopg.Connection[Any], worker_dead_after_seconds: float) -> bytes:
    """The metrics in Prometheus text format, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MovieGenCollector(conn, worker_dead_after_seconds))
    return generate_latest(registry)
