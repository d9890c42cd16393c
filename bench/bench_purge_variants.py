"""Server CPU of one purge batch, eight ways, on the database bench_purge.py seeded.

    DATABASE_URL=postgres://postgres@127.0.0.1:54329/jobstatus .venv/bin/python bench/bench_purge_variants.py
    ... --database jobstatus_bench --batch 2000 --rounds 10

Copies ``--database``_seed (kept by ``bench_purge.py``) into ``--database``_variants, then
deletes batches of the oldest runs with their lines, the variants taking turns (round
after round, each batch the next oldest runs, committed): as ``purge()`` does (the runs
locked and read as one array by a statement, then deleted by the next, which counts
their lines first, the database's ``ON DELETE CASCADE`` and ``SET NULL`` firing once per
run); the same picked and deleted in one statement (``purge()`` before its count was made
exact); the same without counting the lines first (what the count costs: ``purge()``
reports the lines it deleted); the same with the parent's ``SET NULL``
trigger disabled for the batch, counted and not (what the children's foreign key
costs: the floor without it); the lines deleted as one set first (``run_id = ANY``), the
triggers still firing and finding nothing; and the same with no trigger at all
(``session_replication_role = replica``, superuser only: the floor a purge without
foreign keys would reach), the children detached by one ``UPDATE``; and the lines
deleted first by a range of their time, from the batch's first run to an hour past its
last, joined to the batch's runs (a read of the lines in the order they were written,
rather than an index probe a run), the cascade deleting any line outside that range.
Prints the database
backend's CPU per batch (read from ``/proc``: the server must run on this machine) and
the median elapsed time. Each round takes the variants in another order.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import psycopg

RUNS, LOGS = "django_jobstatus_jobrun", "django_jobstatus_joblog"
PICK = (
    f"SELECT id FROM {RUNS} WHERE created_at < now() - interval '30 days'"  # noqa: S608
    " AND created_at >= %(after)s ORDER BY created_at, id LIMIT %(n)s FOR UPDATE SKIP LOCKED"
)
CASCADE = f"""
    WITH picked (id) AS MATERIALIZED ({PICK}),
    lines AS (
        SELECT run_id, count(*) AS n FROM {LOGS}
        WHERE run_id = ANY(ARRAY(SELECT picked.id FROM picked)) GROUP BY run_id
    ), gone AS (
        DELETE FROM {RUNS} WHERE id = ANY(ARRAY(SELECT picked.id FROM picked)) RETURNING id
    )
    SELECT gone.id, coalesce(lines.n, 0) FROM gone LEFT JOIN lines ON lines.run_id = gone.id
"""  # noqa: S608
UNCOUNTED = f"""
    WITH picked (id) AS MATERIALIZED ({PICK})
    DELETE FROM {RUNS} WHERE id = ANY(ARRAY(SELECT picked.id FROM picked)) RETURNING id, NULL
"""  # noqa: S608
SET_BASED = f"""
    WITH picked (id) AS MATERIALIZED ({PICK}),
    lines AS (
        DELETE FROM {LOGS} WHERE run_id = ANY(ARRAY(SELECT picked.id FROM picked))
        RETURNING run_id
    ), gone AS (
        DELETE FROM {RUNS} WHERE id = ANY(ARRAY(SELECT picked.id FROM picked)) RETURNING id
    )
    SELECT gone.id, coalesce(n.n, 0) FROM gone LEFT JOIN (
        SELECT run_id, count(*) AS n FROM lines GROUP BY run_id
    ) AS n ON n.run_id = gone.id
"""  # noqa: S608
# The lines a batch's runs wrote, read as a range of time (the runs' lines that fall
# outside it go by the cascade, and are counted first with the rest).
RANGED = f"""
    WITH picked (id, created_at) AS MATERIALIZED (
        {PICK.replace("SELECT id FROM", "SELECT id, created_at FROM")}
    ), lines AS (
        SELECT run_id, count(*) AS n FROM {LOGS}
        WHERE run_id = ANY(ARRAY(SELECT picked.id FROM picked)) GROUP BY run_id
    ), ranged AS (
        DELETE FROM {LOGS} USING picked WHERE {LOGS}.run_id = picked.id
        AND {LOGS}.created_at >= (SELECT min(created_at) FROM picked)
        AND {LOGS}.created_at < (SELECT max(created_at) FROM picked) + interval '1 hour'
    ), gone AS (
        DELETE FROM {RUNS} WHERE id = ANY(ARRAY(SELECT picked.id FROM picked)) RETURNING id
    )
    SELECT gone.id, coalesce(lines.n, 0) FROM gone LEFT JOIN lines ON lines.run_id = gone.id
"""  # noqa: S608


# purge() since the line count was made exact: the runs locked and read as one array by
# a statement of their own, then the cascade above over those ids.
LOCK = f"SELECT array_agg(page.id)::text FROM ({PICK}) AS page (id)"  # noqa: S608
LOCKED = CASCADE.replace(PICK, "SELECT unnest(%(ids)s::uuid[])")


def cascade(cursor: Any, params: dict[str, Any]) -> list[Any]:
    cursor.execute(CASCADE, params)
    return cursor.fetchall()


def locked_first(cursor: Any, params: dict[str, Any]) -> list[Any]:
    cursor.execute(LOCK, params)
    (ids,) = cursor.fetchone()
    cursor.execute(LOCKED, {"ids": ids})
    return cursor.fetchall()


def uncounted(cursor: Any, params: dict[str, Any]) -> list[Any]:
    cursor.execute(UNCOUNTED, params)
    return cursor.fetchall()


def _without_set_null(cursor: Any, params: dict[str, Any], sql: str) -> list[Any]:
    """``sql`` with the parent's ``ON DELETE SET NULL`` trigger off (ALTER TABLE, in the batch's
    transaction: on again before it commits), the children detached by one ``UPDATE``."""
    cursor.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass"
        " AND tgfoid = 'pg_catalog.\"RI_FKey_setnull_del\"'::regproc",
        [RUNS],
    )
    (trigger,) = cursor.fetchone()
    cursor.execute(f'ALTER TABLE {RUNS} DISABLE TRIGGER "{trigger}"')
    cursor.execute(sql, params)
    rows = cursor.fetchall()
    cursor.execute(
        f"UPDATE {RUNS} SET parent_id = NULL WHERE parent_id = ANY(%s)",  # noqa: S608
        [[row[0] for row in rows]],
    )
    cursor.execute(f'ALTER TABLE {RUNS} ENABLE TRIGGER "{trigger}"')
    return rows


def no_set_null(cursor: Any, params: dict[str, Any]) -> list[Any]:
    return _without_set_null(cursor, params, CASCADE)


def no_set_null_uncounted(cursor: Any, params: dict[str, Any]) -> list[Any]:
    return _without_set_null(cursor, params, UNCOUNTED)


def set_based(cursor: Any, params: dict[str, Any]) -> list[Any]:
    cursor.execute(SET_BASED, params)
    return cursor.fetchall()


def ranged(cursor: Any, params: dict[str, Any]) -> list[Any]:
    cursor.execute(RANGED, params)
    return cursor.fetchall()


def no_triggers(cursor: Any, params: dict[str, Any]) -> list[Any]:
    cursor.execute("SET LOCAL session_replication_role = replica")
    rows = set_based(cursor, params)
    cursor.execute(
        f"UPDATE {RUNS} SET parent_id = NULL WHERE parent_id = ANY(%s)",  # noqa: S608
        [[row[0] for row in rows]],
    )
    return rows


VARIANTS = {
    "locked, then cascade (purge())": locked_first,
    "cascade in one statement": cascade,
    "cascade, lines not counted": uncounted,
    "cascade, no SET NULL trigger": no_set_null,
    "neither": no_set_null_uncounted,
    "lines as a set, triggers": set_based,
    "lines as a set, no trigger": no_triggers,
    "lines by time, then cascade": ranged,
}


def main() -> None:
    from bench.seeding import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument("--database", default="jobstatus_bench")
    parser.add_argument("--batch", type=int, default=2000, help="runs a batch")
    parser.add_argument("--rounds", type=int, default=10)
    options = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:54329/postgres")
    scratch = f"{options.database}_variants"
    with psycopg.connect(url, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
        admin.execute(f'CREATE DATABASE "{scratch}" TEMPLATE "{options.database}_seed"')
    try:
        run(url, scratch, options)
    finally:
        with psycopg.connect(url, dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')


def run(url: str, scratch: str, options: argparse.Namespace) -> None:
    # Autocommit, so that each batch's transaction() is a transaction of its own. Without it
    # the first query opened one that every batch then ran inside as a savepoint: the "no
    # trigger" variant's SET LOCAL session_replication_role lasted until the end, and
    # every batch after it ran without the foreign keys' triggers (its lines orphaned).
    conn = psycopg.connect(
        url, dbname=scratch, cursor_factory=psycopg.ClientCursor, autocommit=True
    )
    stat = f"/proc/{conn.info.backend_pid}/stat"

    def cpu() -> float:
        with open(stat) as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    spent = dict.fromkeys(VARIANTS, 0.0)
    took: dict[str, list[float]] = {name: [] for name in VARIANTS}
    rows = dict.fromkeys(VARIANTS, 0)
    after = "-infinity"
    with conn:
        names = list(VARIANTS)
        for turn in range(options.rounds):
            # Each round in another order: no variant always follows the same one.
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                variant = VARIANTS[name]
                began, cpu_began = time.perf_counter(), cpu()
                with conn.transaction(), conn.cursor() as cursor:
                    done = variant(cursor, {"after": after, "n": options.batch})
                took[name].append(time.perf_counter() - began)
                spent[name] += cpu() - cpu_began
                # Uncounted, its lines are not known: its rows a CPU second are left out.
                rows[name] += len(done) + sum(lines or 0 for _, lines in done)
                with conn.cursor() as cursor:
                    cursor.execute(f"SELECT min(created_at)::text FROM {RUNS}")  # noqa: S608
                    after = cursor.fetchone()[0]
                    cursor.execute("SHOW session_replication_role")
                    if cursor.fetchone()[0] != "origin":
                        raise SystemExit(f"{name} left the triggers off")
        with conn.cursor() as cursor:
            # Every variant deletes a run's lines with it: none may be left without its run.
            cursor.execute(
                f"SELECT count(*) FROM {LOGS} WHERE NOT EXISTS"  # noqa: S608
                f" (SELECT 1 FROM {RUNS} WHERE {RUNS}.id = {LOGS}.run_id)"
            )
            (orphans,) = cursor.fetchone()
            if orphans:
                raise SystemExit(f"{orphans:,} log lines outlived their runs")
    print(f"{options.rounds} batches of {options.batch:,} runs each (with their lines)")
    print(f"{'':32}{'CPU ms/batch':>14}{'rows/CPU s':>12}{'median ms':>11}")
    for name in VARIANTS:
        rate = (
            "-"
            if VARIANTS[name] in (uncounted, no_set_null_uncounted)
            else f"{rows[name] / max(spent[name], 1e-9):,.0f}"
        )
        print(
            f"{name:32}{spent[name] / options.rounds * 1000:>14.0f}{rate:>12}"
            f"{statistics.median(took[name]) * 1000:>11.0f}"
        )


if __name__ == "__main__":
    main()
