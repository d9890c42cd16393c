"""On PostgreSQL: the changelist's filters are served by indexes (EXPLAIN), never by a table scan."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobstatus.admin.filters import JOB_NAME_CHOICES
from django_jobstatus.models import JobLog, JobRun
from django_jobstatus.querysets import job_names_sql
from tests.admin.history import seven_jobs
from tests.plans import plan, vacuum_analyze, visible_pages

pytestmark = pytest.mark.postgres


def queryset_plan(queryset) -> str:
    sql, params = queryset.query.sql_with_params()
    return plan(sql, params)


def test_job_name_choices_skip_through_the_index(make_run):
    for i in range(30):
        make_run(f"job{i % 3}")
    table = connection.ops.quote_name(JobRun._meta.db_table)
    sql = job_names_sql(table)
    text = plan(sql, [JOB_NAME_CHOICES])
    assert "jobstatus_run_job_id_idx" in text
    assert "Seq Scan" not in text


def _analyze() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {JobRun._meta.db_table}")
        cursor.execute(f"ANALYZE {JobLog._meta.db_table}")


@pytest.fixture
def analyzed_afresh(db) -> Iterator[None]:
    """For a test that ANALYZEs its rows: ANALYZE writes its figures outside the test's
    transaction, so they are reset at the end (else the next tests read its row counts:
    the paginator's estimates, the planner's choices)."""
    yield
    JobLog.objects.all().delete()
    JobRun.objects.all().delete()
    _analyze()


@pytest.fixture
def seeded(analyzed_afresh: None) -> None:
    """A table shaped like a real one, analyzed, so the plan does not hang on stale
    statistics (reset at the end: ``analyzed_afresh``)."""
    from datetime import timedelta

    from django_jobstatus.models import Status, uuid7

    now = timezone.now()
    runs = []
    for i in range(3000):
        status = Status.FAILED if i % 50 == 0 else Status.SUCCEEDED
        runs.append(
            JobRun(
                id=uuid7(),
                job_name=f"job{i % 60}",
                status=status,
                created_at=now - timedelta(minutes=i),
                started_at=now - timedelta(minutes=i),
                finished_at=now - timedelta(minutes=i - 1),
            )
        )
    JobRun.objects.bulk_create(runs)
    JobLog.objects.bulk_create(
        JobLog(run=runs[i % 100], level=20, message=f"line {i}") for i in range(3000)
    )
    _analyze()


@pytest.mark.parametrize(
    ("build", "index"),
    [
        (
            lambda: JobRun.objects.failed().order_by("-created_at")[:50],
            "jobstatus_run_status_idx",
        ),
        (
            lambda: JobRun.objects.for_job("a").order_by("-created_at")[:50],
            "jobstatus_run_job_id_idx",
        ),
        (
            lambda: JobRun.objects.filter(created_at__gte=timezone.now()).order_by(
                "-created_at"
            )[:50],
            "jobstatus_run_created_id_idx",
        ),
        (
            lambda: JobRun.objects.order_by("-created_at")[:50],
            "jobstatus_run_created_id_idx",
        ),
        (
            lambda: JobRun.objects.stale(),
            # Either partial index of the active runs serves it (the OR cannot be an index condition).
            (
                "jobstatus_run_active_idx",
                "jobstatus_run_active_job_idx",
                "jobstatus_run_status_idx",
            ),
        ),
        (
            lambda: JobLog.objects.filter(
                run_id="01a20000-0000-7000-8000-000000000000"
            ).order_by("-created_at")[:201],
            ("jobstatus_log_run_idx", "joblog_run_id"),
        ),
        (
            lambda: JobLog.objects.filter(message__icontains="try 503").order_by(),
            "jobstatus_log_message_trgm",
        ),
        (
            lambda: JobLog.objects.order_by("-created_at")[:100],
            "jobstatus_log_created_id_idx",
        ),
        # The nullable foreign keys, indexed where set (0018): a lookup implies the condition.
        (
            lambda: JobRun.objects.filter(
                parent_id="01a20000-0000-7000-8000-000000000000"
            ),
            "jobstatus_run_parent_idx",
        ),
        (lambda: JobRun.objects.filter(owner_id=1), "jobstatus_run_owner_idx"),
    ],
)
def test_filters_use_an_index(seeded, build, index):
    text = queryset_plan(build())
    assert any(
        name in text for name in ((index,) if isinstance(index, str) else index)
    ), text
    assert "Seq Scan" not in text, text


def test_each_run_deleted_looks_its_children_up_in_the_index_of_set_parents(seeded):
    """The SET NULL the database fires for every run deleted (a purge: once a run) reads
    the partial index of the runs that have a parent (0018), not an index of every run."""
    runs = JobRun._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"PREPARE jobstatus_set_null (uuid) AS UPDATE ONLY {runs}"  # noqa: S608
            " SET parent_id = NULL WHERE $1 = parent_id"
        )
        try:
            # The foreign key's own query, as a generic plan (its parameter unknown).
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            text = plan("EXECUTE jobstatus_set_null (%s)", [JobRun.objects.first().pk])
        finally:
            cursor.execute("RESET plan_cache_mode")
            cursor.execute("DEALLOCATE jobstatus_set_null")
    assert "jobstatus_run_parent_idx" in text, text
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s"
            " AND indexdef LIKE %s AND indexdef NOT LIKE %s",
            [runs, "%(parent_id)%", "% WHERE %"],
        )
        assert cursor.fetchall() == []


@pytest.mark.usefixtures("analyzed_afresh")
def test_paginator_never_scans_a_big_table_to_count(make_run, monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from django_jobstatus.admin.paginator import CappedCountPaginator

    run = make_run("a")
    JobLog.objects.bulk_create(
        JobLog(run=run, level=20, message=f"line {i}") for i in range(40)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {JobLog._meta.db_table}")
    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    with CaptureQueriesContext(connection) as queries:
        assert (
            CappedCountPaginator(JobLog.objects.all(), 10).count == 40
        )  # the table's estimate
        estimate = CappedCountPaginator(
            JobLog.objects.filter(message__icontains="line 3"), 10
        ).count
    assert estimate >= 0
    assert not any("COUNT(" in q["sql"] for q in queries.captured_queries)
    # Served by an index: the exact capped count.
    with CaptureQueriesContext(connection) as queries:
        assert CappedCountPaginator(
            JobLog.objects.filter(run=run, created_at__lt=timezone.now()), 10
        ).count in {5, 40}


@pytest.mark.usefixtures("analyzed_afresh")
def test_a_filter_read_by_a_table_scan_is_counted_from_one_plan(make_run, monkeypatch):
    """The estimate of a filter no index serves comes from the plan that found the scan:
    one EXPLAIN, not a second one of the query without its LIMIT."""
    from django_jobstatus.admin.paginator import CappedCountPaginator, _plan

    run = make_run("a")
    JobLog.objects.bulk_create(
        JobLog(run=run, level=20, message=f"line {i}", extra={"n": i} if i % 2 else {})
        for i in range(60)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {JobLog._meta.db_table}")
    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    unindexed = JobLog.objects.filter(extra__has_key="n")
    with CaptureQueriesContext(connection) as queries:
        count = CappedCountPaginator(unindexed, 10).count
    explains = [q for q in queries.captured_queries if q["sql"].startswith("EXPLAIN")]
    assert len(explains) == 1, [q["sql"][:80] for q in queries.captured_queries]
    assert not any("COUNT(" in q["sql"] for q in queries.captured_queries)
    # The same figure as the plan of the whole query.
    assert count == max(int(_plan(connection, unindexed.order_by())["Plan Rows"]), 0)


@pytest.mark.django_db(transaction=True)
def test_vacuum_analyze_waits_out_a_transaction_that_holds_the_rows_back():
    """What failed test_failures_are_grouped_from_the_index_alone once in CI (its plan read
    jobstatus_run_finished_idx): a transaction open elsewhere in the database, older than
    the rows, kept VACUUM from marking their pages all-visible, so index-only scans were
    priced as index scans and the planner chose another index. vacuum_analyze() now
    VACUUMs again until the pages are all-visible, and names what holds them back."""
    other = connections.create_connection("default")
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute("SELECT txid_current()")
        seven_jobs(700)
        with pytest.raises(
            pytest.fail.Exception, match="(?s)all-visible.*idle in transaction"
        ):
            vacuum_analyze(JobRun, timeout=0.2)

        def end_it_after_a_vacuum(execute, sql, *args):
            result = execute(sql, *args)
            if sql.startswith("VACUUM"):
                other.rollback()
            return result

        with connection.execute_wrapper(end_it_after_a_vacuum):
            vacuum_analyze(JobRun)
    finally:
        other.close()
    pages, visible = visible_pages(JobRun)
    assert pages > 0
    assert visible == pages


@pytest.mark.django_db(transaction=True)
def test_vacuum_analyze_clears_a_dead_row_left_on_a_page():
    """What failed test_an_older_link_starts_its_index_scan_at_its_row once in CI (30 s
    waiting for the log lines' pages, no transaction holding them back): a rolled-back
    insert leaves a dead item on a page, and on a table of more than 50 pages VACUUM skips
    the index pass for fewer than 2% of pages with dead items, which keeps that page from
    ever being all-visible however often it runs. vacuum_analyze() asks for the index
    pass (INDEX_CLEANUP ON)."""
    (run,) = seven_jobs(1)
    now = timezone.now()
    JobLog.objects.bulk_create(
        JobLog(run=run, level=20, message=f"line {i}", created_at=now)
        for i in range(15_000)
    )
    with pytest.raises(RuntimeError), transaction.atomic():
        JobLog.objects.create(run=run, level=20, message="rolled back")
        raise RuntimeError
    vacuum_analyze(JobLog, timeout=2)
    pages, visible = visible_pages(JobLog)
    assert pages > 50
    assert visible == pages


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("retry_sources", [(), ("celery", "rq")])
@pytest.mark.parametrize(
    ("limit", "window_failures", "index"),
    [(200, 0, "jobstatus_run_failure_idx"), (3, 10**6, "jobstatus_run_group_idx")],
)
def test_failures_are_grouped_from_the_index_alone(
    retry_sources, limit, window_failures, index
):
    """The failures view's and the dashboard's groups: no run is read from the table.

    The view groups every failure of the window, from the window's index. The dashboard,
    whose roll-ups say the window holds many, reads the newest failures from that index
    first, then counts only the newest groups, a range of the (job, cause) index each.
    Committed and vacuumed (an index-only scan needs the visibility map), so the planner
    prices the plan as on a real table. As on a real table, the window is the newest part
    of the history: with every failure inside it, reading the whole (job, cause) index
    costs the same as the window's range, and the planner chose either.
    """
    from django_jobstatus.models import Status, uuid7

    now = timezone.now()
    window = timedelta(days=7)
    JobRun.objects.bulk_create(
        JobRun(
            id=uuid7(),
            job_name=f"job{i % 40}",
            status=Status.FAILED if i % 10 == 0 else Status.SUCCEEDED,
            source="celery" if i % 3 else "rq",
            error_fingerprint=f"ValueError: case {i % 7}" if i % 10 == 0 else "",
            created_at=now - older - timedelta(minutes=i),
            started_at=now - older - timedelta(minutes=i),
            finished_at=now - older - timedelta(minutes=i - 1),
        )
        # 5,000 runs in the window, then three weeks of older runs.
        for older, runs in ((timedelta(0), 5000), (window + timedelta(hours=1), 15000))
        for i in range(runs)
    )
    vacuum_analyze(JobRun)
    with CaptureQueriesContext(connection) as captured:
        groups = JobRun.objects.failure_groups(
            now - window,
            limit=limit,
            retry_sources=retry_sources,
            window_failures=window_failures,
        )
    assert len(groups) == min(limit, 28)
    if limit == 200:
        assert sum(group["count"] for group in groups) == 500
    plans = [
        plan(query["sql"], off=("seqscan", "bitmapscan"))
        for query in captured.captured_queries
    ]
    if window_failures:
        newest = plans.pop(0)
        assert "Index Only Scan Backward using jobstatus_run_failure_idx" in newest
    [counted] = plans
    assert f"Index Only Scan using {index}" in counted, counted


@pytest.mark.django_db(transaction=True)
def test_a_job_s_deep_page_is_found_from_the_index_alone(monkeypatch, admin_client):
    """Page 300 of a job: its first row comes from an index-only OFFSET of (job_name,
    created_at, id), and its rows from an index range starting there (the plain bound on
    created_at beside the OR). Before, the first row walked the (created_at, id) index and
    read every run of the pages before from the table, and the rows were found by
    filtering every run newer than the page (294 ms on a million runs)."""
    from django_jobstatus.admin import paginator

    monkeypatch.setattr(paginator, "DEEP", 60)
    seven_jobs(7000)
    vacuum_analyze(JobRun)
    expected = list(JobRun.objects.for_job("job3").order_by("-created_at", "-id"))
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(
            "/admin/django_jobstatus/jobrun/", {"job_name": "job3", "p": 4}
        )
    assert list(response.context["cl"].result_list) == expected[150:200]
    queries = [query["sql"] for query in captured.captured_queries]
    (first,) = [sql for sql in queries if "OFFSET" in sql]
    text = plan(first, off=("seqscan", "bitmapscan"))
    assert "Index Only Scan Backward using jobstatus_run_job_id_idx" in text, text
    (rows,) = [sql for sql in queries if sql.endswith(" LIMIT 50") and "<=" in sql]
    text = plan(rows, off=("seqscan", "bitmapscan"))
    assert (
        "Index Cond: (((job_name)::text = 'job3'::text) AND (created_at <=" in text
    ), text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("/admin/django_jobstatus/jobrun/", {}),
        ("/admin/django_jobstatus/jobrun/", {"job_name": "job3"}),
        ("/admin/django_jobstatus/joblog/", {}),
    ],
)
def test_an_older_link_starts_its_index_scan_at_its_row(admin_client, url, extra):
    """An *Older* link's page is an index range from the last row shown. Without the plain
    bound on created_at beside the keyset's OR, the scan began at the newest row and
    filtered out every row before: 883 ms for runs and 3.3 s for log lines 90% down a
    million runs."""
    runs = seven_jobs(3000)
    now = timezone.now()
    JobLog.objects.bulk_create(
        JobLog(run=run, level=20, message="line", created_at=now - timedelta(seconds=i))
        for i, run in enumerate(runs)
    )
    model = JobLog if "joblog" in url else JobRun
    vacuum_analyze(*{JobRun, model})
    rows = model.objects.filter(**extra).order_by("-created_at", "-id")
    at = rows.count() * 2 // 3
    last = rows[at]
    older = f"{last.created_at.isoformat()},{last.pk}"
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(url, {**extra, "older": older})
    shown = list(response.context["cl"].result_list)
    assert shown == list(rows[at + 1 : at + 1 + len(shown)]) and shown
    pages = [
        query["sql"]
        for query in captured.captured_queries
        if "COUNT(" not in query["sql"] and "<=" in query["sql"]
    ]
    assert pages
    for page in pages:
        text = plan(page, off=("seqscan", "bitmapscan"))
        assert re.search(r"Index Cond: .*created_at <=", text), text


@pytest.mark.django_db(transaction=True)
def test_a_deep_page_of_errors_skips_the_warnings_in_the_index_alone(admin_client):
    """The log lines' errors filter, deep: the warnings it skips are read from the
    index (which holds the level), not from the table (191 ms at page 100 of 10 million
    lines)."""
    runs = seven_jobs(10)
    now = timezone.now()
    JobLog.objects.bulk_create(
        JobLog(
            run=runs[i % 10],
            level=40 if i % 5 == 0 else 30,
            message="line",
            created_at=now - timedelta(seconds=i),
        )
        for i in range(5000)
    )
    vacuum_analyze(JobLog)
    expected = list(JobLog.objects.at_least(40).order_by("-created_at", "-id"))
    response = admin_client.get("/admin/django_jobstatus/joblog/", {"level": "40"})
    assert list(response.context["cl"].result_list) == expected[:100]
    deep = (
        JobLog.objects.at_least(40)
        .order_by("-created_at", "-id")
        .values_list("created_at", "id")[600:601]
    )
    text = queryset_plan(deep)
    assert "Index Only Scan Backward using jobstatus_log_warn_level_idx" in text, text


RUNS = "/admin/django_jobstatus/jobrun/"


def _page_queries(captured: CaptureQueriesContext) -> list[str]:
    """The queries that read a page's rows: 50, or 51 when the count said one page."""
    return [
        query["sql"]
        for query in captured.captured_queries
        if re.search(r" LIMIT 5[01]$", query["sql"])
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("query", "fields", "index"),
    [
        ({"source": "rq"}, {"source": "rq"}, "jobstatus_run_source_idx"),
        (
            {"worker": "celery@box-7:4711"},
            {"worker": "celery@box-7:4711"},
            "jobstatus_run_worker_idx",
        ),
        ({"queue": "slow"}, {"queue": "slow"}, "jobstatus_run_queue_idx"),
        (
            {"kill_requested": "yes"},
            {"kill_requested_at": timezone.now()},
            "jobstatus_run_kill_idx",
        ),
        ({"has_errors": "yes"}, {"has_errors": True}, "jobstatus_run_errors_idx"),
        (
            {"error_fingerprint": "f00dfeed"},
            {"status": "failed", "error_fingerprint": "f00dfeed"},
            "jobstatus_run_cause_idx",
        ),
    ],
)
def test_a_rare_value_s_page_is_an_index_range(admin_client, query, fields, index):
    """A filter's page is a range of an index on its column, however few runs match.
    Without one the page walked the runs newest first, reading each from the table, to
    the last match or the end: ``?source=manual`` (301 of a million runs) took 510 ms,
    ``?kill_requested=yes`` (none) 298 ms."""
    runs = seven_jobs(7000)
    rare = [run.pk for run in runs[3000::700]]
    JobRun.objects.filter(pk__in=rare).update(**fields)
    vacuum_analyze(JobRun)
    expected = list(JobRun.objects.filter(pk__in=rare).order_by("-created_at", "-id"))
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(RUNS, query)
    assert list(response.context["cl"].result_list) == expected
    (rows,) = _page_queries(captured)
    text = plan(rows, off=("seqscan", "bitmapscan"))
    assert f"Index Scan Backward using {index}" in text, text


@pytest.mark.django_db(transaction=True)
def test_a_source_s_deep_page_is_found_from_its_index_alone(monkeypatch, admin_client):
    """Page 4 of a source past DEEP rows: its first row is an index-only OFFSET of
    (source, created_at, id), not a walk of every run's row newest first."""
    from django_jobstatus.admin import paginator

    monkeypatch.setattr(paginator, "DEEP", 60)
    runs = seven_jobs(7000)
    JobRun.objects.filter(pk__in=[run.pk for run in runs[::3]]).update(source="rq")
    vacuum_analyze(JobRun)
    expected = list(JobRun.objects.filter(source="rq").order_by("-created_at", "-id"))
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(RUNS, {"source": "rq", "p": 4})
    assert list(response.context["cl"].result_list) == expected[150:200]
    (first,) = [
        query["sql"] for query in captured.captured_queries if "OFFSET" in query["sql"]
    ]
    text = plan(first, off=("seqscan", "bitmapscan"))
    assert "Index Only Scan Backward using jobstatus_run_source_idx" in text, text


@pytest.mark.django_db(transaction=True)
def test_the_monitor_filter_reads_its_jobs_runs_by_name(admin_client):
    """The monitored jobs' names are read first, then their runs from the job index. As a
    subquery, a state no monitor was in had the planner walk every run (800 ms on a
    million runs); now no run is read at all."""
    from django_jobstatus.models import JobMonitor, MonitorState

    seven_jobs(7000)
    JobMonitor.objects.create(job_name="job3", state=MonitorState.FAILING)
    vacuum_analyze(JobRun)
    newest = JobRun.objects.order_by("-created_at", "-id")

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(RUNS, {"monitor": "late"})
    assert list(response.context["cl"].result_list) == []
    assert not _page_queries(captured)

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(RUNS, {"monitor": "unhealthy"})
    assert list(response.context["cl"].result_list) == list(
        newest.filter(job_name="job3")[:50]
    )
    (rows,) = _page_queries(captured)
    text = plan(rows, off=("seqscan", "bitmapscan"))
    assert "Index Cond: ((job_name)::text = 'job3'::text)" in text, text

    response = admin_client.get(RUNS, {"monitor": "none"})
    assert list(response.context["cl"].result_list) == list(
        newest.exclude(job_name="job3")[:50]
    )


@pytest.mark.django_db(transaction=True)
def test_a_log_search_asks_the_trigram_index_for_its_rarest_word_only(admin_client):
    """ "customer 42424" among ten million lines: both words given to the trigram index
    took 95 ms in the index (every line holding a trigram of "customer"), "42424" alone
    4 ms; the common word is then checked on the lines found."""
    runs = seven_jobs(10)
    now = timezone.now()
    JobLog.objects.bulk_create(
        JobLog(
            run=runs[i % 10],
            message=f"customer {i} billed" if i % 1000 else f"Customer zq{i}x refunded",
            created_at=now - timedelta(seconds=i),
        )
        for i in range(5000)
    )
    vacuum_analyze(JobLog)
    expected = list(
        JobLog.objects.filter(message__icontains="customer")
        .filter(message__icontains="ZQ")
        .order_by("-created_at", "-id")
    )
    assert len(expected) == 5
    for search in ("CUSTOMER zq", "zq customer", '"customer zq" zq'):
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(
                "/admin/django_jobstatus/joblog/", {"q": search}
            )
        assert list(response.context["cl"].result_list) == expected, search
        (page,) = [
            query["sql"]
            for query in captured.captured_queries
            if query["sql"].startswith('SELECT "django_jobstatus_joblog"."id"')
        ]
        # The rarest word as the index's LIKE, the other as STRPOS, which it does not serve.
        where = page.split(" WHERE ", 1)[1]
        assert where.count(" LIKE ") == 1, where
        assert where.count("STRPOS(") == 1, where
        assert "ZQ%" in where.split("STRPOS(")[0].upper(), where
