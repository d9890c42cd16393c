"""A prototype measured, not shipped: the log lines partitioned by week and dropped whole.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_purge_partitions.py
    ... --database jobstatus_bench1m

Copies ``--database``_seed (kept by ``bench_purge.py``: runs over 90 days, their ids
UUIDv7 of their creation time) twice. In each copy the log table is rebuilt as one
partitioned by ``RANGE (run_id)``, a partition a week of the runs' ids (so all of a
run's lines sit in its week), with the indexes the purge uses; in one copy the foreign
key to the runs is kept (``ON DELETE CASCADE``), in the other it is dropped. Then the
same purge as ``bench_purge.py`` (everything older than 30 days): each week wholly
older than the cutoff has its lines counted by job name and status (what ``purge()``
reports), its partition dropped, and its runs deleted in batches of 6,000; the rest as
``purge()`` does it (a batch of runs picked, their lines counted, the runs deleted, the
lines by the cascade; without the key, by the batch's statement). Beside it, on the same copy, django-celery-results' expired task
results deleted by the statement ``delete_expired()`` sends (one ``DELETE``). Prints the
time of each part, the rows a second, the database backend's CPU (the server must run on
this machine) and the ratio.
"""

from __future__ import annotations

import os
import time

import psycopg

RUNS, LOGS = "django_jobstatus_jobrun", "django_jobstatus_joblog"
RESULTS = "django_celery_results_taskresult"
BATCH = 6000

PARTITION = f"""
CREATE FUNCTION pg_temp.uuid_at(t timestamptz) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid $$;
CREATE TABLE lines (LIKE {LOGS} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (run_id);
DO $$
DECLARE week timestamptz := date_trunc('week', (SELECT min(created_at) FROM {RUNS}));
BEGIN
    WHILE week < now() + interval '7 days' LOOP
        EXECUTE format('CREATE TABLE lines_%s PARTITION OF lines FOR VALUES FROM (%L) TO (%L)',
            to_char(week, 'YYYYMMDD'), pg_temp.uuid_at(week),
            pg_temp.uuid_at(week + interval '7 days'));
        week := week + interval '7 days';
    END LOOP;
END $$;
CREATE TABLE lines_default PARTITION OF lines DEFAULT;
INSERT INTO lines SELECT * FROM {LOGS};
ALTER TABLE lines ADD PRIMARY KEY (id, run_id);
CREATE INDEX ON lines (run_id, created_at);
CREATE INDEX ON lines (created_at, id);
DROP TABLE {LOGS};
ALTER TABLE lines RENAME TO {LOGS};
"""  # noqa: S608
FOREIGN_KEY = f"""
ALTER TABLE {LOGS} ADD FOREIGN KEY (run_id) REFERENCES {RUNS} (id)
    ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
"""
WEEKS = f"""
SELECT c.relname, lower_bound, upper_bound FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid,
LATERAL (SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid),
    'FROM \\(''(.*)''\\) TO \\(''(.*)''\\)'))) AS m (bounds),
LATERAL (SELECT m.bounds[1]::uuid, m.bounds[2]::uuid) AS b (lower_bound, upper_bound)
WHERE i.inhparent = '{LOGS}'::regclass AND m.bounds IS NOT NULL
ORDER BY lower_bound
"""  # noqa: S608
COUNT_WEEK = """
SELECT r.job_name, r.status, sum(c.n) FROM (
    SELECT run_id, count(*) AS n FROM {week} GROUP BY run_id
) AS c JOIN {runs} r ON r.id = c.run_id GROUP BY 1, 2
"""
DELETE_WEEK = f"""
DELETE FROM {RUNS} WHERE id = ANY(ARRAY(
    SELECT id FROM {RUNS} WHERE id >= %(lower)s AND id < %(upper)s AND created_at < %(cutoff)s
    ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED))
"""  # noqa: S608
BATCH_AS_PURGE = f"""
WITH picked (id) AS MATERIALIZED (
    SELECT id FROM {RUNS} WHERE created_at < %(cutoff)s
    ORDER BY created_at, id LIMIT %(n)s FOR UPDATE SKIP LOCKED
), lines AS (
    SELECT run_id, count(*) AS n FROM {LOGS}
    WHERE run_id = ANY(ARRAY(SELECT picked.id FROM picked)) GROUP BY run_id
), gone AS (
    DELETE FROM {RUNS} WHERE id = ANY(ARRAY(SELECT picked.id FROM picked)) RETURNING id
)
SELECT count(*), coalesce(sum(lines.n), 0) FROM gone LEFT JOIN lines ON lines.run_id = gone.id
"""  # noqa: S608
# Without the foreign key, the lines go in the batch's statement.
BATCH_WITHOUT_KEY = f"""
WITH picked (id) AS MATERIALIZED (
    SELECT id FROM {RUNS} WHERE created_at < %(cutoff)s
    ORDER BY created_at, id LIMIT %(n)s FOR UPDATE SKIP LOCKED
), lines AS (
    DELETE FROM {LOGS} WHERE run_id = ANY(ARRAY(SELECT picked.id FROM picked)) RETURNING run_id
), gone AS (
    DELETE FROM {RUNS} WHERE id = ANY(ARRAY(SELECT picked.id FROM picked)) RETURNING id
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM lines)
"""  # noqa: S608


def main() -> None:
    from bench.seeding import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument("--database", default="jobstatus_bench")
    options = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:54329/postgres")
    results = {}
    for label, keep_key in (("foreign key kept", True), ("no foreign key", False)):
        scratch = f"{options.database}_partitions"
        with psycopg.connect(url, dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
            admin.execute(
                f'CREATE DATABASE "{scratch}" TEMPLATE "{options.database}_seed"'
            )
        try:
            results[label] = run(url, scratch, keep_key=keep_key)
        finally:
            with psycopg.connect(url, dbname="postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
    print()
    print(f"{'':34}{'foreign key kept':>18}{'no foreign key':>16}")
    for key in results["foreign key kept"]:
        cells = "".join(
            f"{results[label][key]:>{width}}"
            for label, width in (("foreign key kept", 18), ("no foreign key", 16))
        )
        print(f"{key:34}{cells}")


def run(url: str, scratch: str, *, keep_key: bool) -> dict[str, str]:
    conn = psycopg.connect(url, dbname=scratch, autocommit=True)
    stat = f"/proc/{conn.info.backend_pid}/stat"

    def cpu() -> float:
        with open(stat) as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with conn:
        began = time.perf_counter()
        conn.execute(PARTITION)
        if keep_key:
            conn.execute(FOREIGN_KEY)
        conn.execute(f"VACUUM ANALYZE {LOGS}")
        conn.execute(f"VACUUM ANALYZE {RUNS}")
        conn.execute(f"VACUUM ANALYZE {RESULTS}")
        converted = time.perf_counter() - began
        cutoff = conn.execute("SELECT now() - interval '30 days'").fetchone()[0]
        weeks = conn.execute(WEEKS).fetchall()
        parts = {"count": 0.0, "drop": 0.0, "runs": 0.0, "rest": 0.0}
        runs = lines = 0
        longest = 0.0
        counts: dict[tuple[str, str], int] = {}
        began, cpu_began = time.perf_counter(), cpu()
        for week, lower, upper in weeks:
            whole = conn.execute(
                "SELECT pg_temp.uuid_at(%s) >= %s", [cutoff, upper]
            ).fetchone()[0]
            if not whole:
                continue
            step = time.perf_counter()
            for name, status, n in conn.execute(
                COUNT_WEEK.format(week=week, runs=RUNS)
            ):
                counts[name, status] = counts.get((name, status), 0) + int(n)
                lines += int(n)
            parts["count"] += time.perf_counter() - step
            step = time.perf_counter()
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '200ms'")
                conn.execute(f"DROP TABLE {week}")
            took = time.perf_counter() - step
            parts["drop"] += took
            longest = max(longest, took)
            while True:
                step = time.perf_counter()
                with conn.transaction():
                    deleted = conn.execute(
                        DELETE_WEEK,
                        {"lower": lower, "upper": upper, "cutoff": cutoff, "n": BATCH},
                    ).rowcount
                took = time.perf_counter() - step
                parts["runs"] += took
                longest = max(longest, took)
                runs += deleted
                if deleted < BATCH:
                    break
        while True:
            step = time.perf_counter()
            with conn.transaction():
                deleted, deleted_lines = conn.execute(
                    BATCH_AS_PURGE if keep_key else BATCH_WITHOUT_KEY,
                    {"cutoff": cutoff, "n": BATCH},
                ).fetchone()
            took = time.perf_counter() - step
            parts["rest"] += took
            longest = max(longest, took)
            runs += deleted
            lines += int(deleted_lines)
            if deleted < BATCH:
                break
        seconds, spent = time.perf_counter() - began, cpu() - cpu_began
        began, cpu_began = time.perf_counter(), cpu()
        with conn.transaction():
            results = conn.execute(
                f"DELETE FROM {RESULTS} WHERE date_done < %s",  # noqa: S608
                [cutoff],
            ).rowcount
        theirs, their_cpu = time.perf_counter() - began, cpu() - cpu_began
        left = conn.execute(
            f"SELECT count(*) FROM {LOGS} l WHERE NOT EXISTS"  # noqa: S608
            f" (SELECT 1 FROM {RUNS} r WHERE r.id = l.run_id)"
        ).fetchone()[0]
    ours_rate, their_rate = (runs + lines) / seconds, results / theirs
    return {
        "table rebuilt, s": f"{converted:.1f}",
        "runs deleted": f"{runs:,}",
        "log lines deleted": f"{lines:,}",
        "lines left without their run": f"{left:,}",
        "whole weeks: lines counted, s": f"{parts['count']:.1f}",
        "whole weeks: partitions dropped, s": f"{parts['drop']:.2f}",
        "whole weeks: runs deleted, s": f"{parts['runs']:.1f}",
        "the rest, as purge(), s": f"{parts['rest']:.1f}",
        "seconds": f"{seconds:.1f}",
        "longest transaction, s": f"{longest:.3f}",
        "server CPU, s": f"{spent:.2f}",
        "all rows per s": f"{ours_rate:,.0f}",
        "task results deleted": f"{results:,}",
        "celery-results DELETE, s": f"{theirs:.2f}",
        "celery-results server CPU, s": f"{their_cpu:.2f}",
        "ratio, rows per s": f"{ours_rate / their_rate:.2f}",
        "ratio, rows per server CPU s": (
            f"{(runs + lines) / spent / (results / max(their_cpu, 1e-9)):.2f}"
        ),
    }


if __name__ == "__main__":
    main()
