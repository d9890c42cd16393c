"""The JobRun changelist: columns, filters, search, read-only, and bounded queries."""

from __future__ import annotations

import re
from datetime import timedelta
from html import escape, unescape

import pytest
from django.urls import reverse
from django.utils import timezone

from django_jobstatus.admin.filters import distinct_job_names
from django_jobstatus.admin.paginator import CappedCountPaginator
from django_jobstatus.models import JobRun, Status
from tests.admin.history import seven_jobs
from tests.admin.test_big_tables import _count_text

URL = "/admin/django_jobstatus/jobrun/"


def names(response) -> list[str]:
    return sorted(run.job_name for run in response.context["cl"].result_list)


def test_the_attempt_shows_under_the_status_when_not_the_first(admin_client, make_run):
    make_run("first")
    make_run("third", attempt=3)
    html = admin_client.get(URL).content.decode()
    assert html.count("jobstatus-attempt") == 1
    assert "attempt 3" in html


def test_columns(admin_client, make_run):
    make_run(
        "reports.build",
        progress_current=30,
        progress_total=120,
        step="rendering",
        message="Page 30",
        attempt=2,
        source="celery",
    )
    response = admin_client.get(URL)
    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["cl"].list_display[1:] == [
        "job_name",
        "status_display",
        "progress_display",
        "message_display",
        "created_display",
        "duration_display",
        "source",
        "monitor_display",
    ]
    for header in (
        "Job name",
        "Status",
        "Progress",
        "Message",
        "Created",
        "Duration",
        "Source",
    ):
        assert f">{header}<" in html.replace("\n", "")
    assert 'class="jobstatus-badge jobstatus-running"' in html
    assert 'style="width: 25.0%"' in html
    assert "25%" in html
    assert "rendering" in html
    assert "Page 30" in html
    assert (
        'class="jobstatus-duration" data-started="' in html
    )  # counted on by the script while it runs
    assert "celery" in html
    assert "/static/django_jobstatus/js/jobstatus.js" in html
    assert (
        reverse("admin:django_jobstatus_jobrun_dashboard") in html
    )  # object-tools link


def test_stopping_badge_for_a_run_asked_to_stop(admin_client, make_run):
    run = make_run("a")
    run.request_kill()
    assert "jobstatus-stopping" in admin_client.get(URL).content.decode()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", ["failing"]),
        ("status=active", ["queued", "running"]),
        ("status=finished", ["ancient", "done", "failing", "old"]),
        ("job_name=done", ["done"]),
        ("source=celery", ["running"]),
        ("has_errors=yes", ["failing"]),
        ("has_errors=no", ["ancient", "done", "old", "queued", "running"]),
        ("kill_requested=yes", ["running"]),
        ("created=1h", ["done", "failing", "queued", "running"]),
        ("created=24h", ["done", "failing", "old", "queued", "running"]),
        ("status=succeeded&created=1h", ["done"]),
    ],
)
def test_filters(admin_client, make_run, query, expected):
    make_run("done", status=Status.SUCCEEDED)
    make_run("failing", status=Status.FAILED, has_errors=True)
    make_run("queued", status=Status.QUEUED)
    make_run("running", source="celery").request_kill()
    make_run(
        "old", status=Status.SUCCEEDED, created_at=timezone.now() - timedelta(hours=3)
    )
    make_run(
        "ancient",
        status=Status.SUCCEEDED,
        created_at=timezone.now() - timedelta(days=40),
    )
    response = admin_client.get(f"{URL}?{query}")
    assert response.status_code == 200
    assert names(response) == expected


def test_filter_choices(admin_client, make_run):
    make_run("b.job")
    make_run("a.job", source="my_cron")
    response = admin_client.get(URL)
    specs = {str(spec.title): spec for spec in response.context["cl"].filter_specs}
    assert set(specs) == {
        "status",
        "job name",
        "source",
        "has errors",
        "kill requested",
        "created",
        "finished",
        "monitor",
    }
    assert [value for value, _label in specs["job name"].lookup_choices] == [
        "a.job",
        "b.job",
    ]
    assert "my_cron" in [value for value, _label in specs["source"].lookup_choices]
    assert "celery" in [value for value, _label in specs["source"].lookup_choices]


def test_distinct_job_names_is_bounded(make_run):
    for i in range(5):
        make_run(f"job{i}")
        make_run(f"job{i}")
    assert distinct_job_names(JobRun, "default") == [f"job{i}" for i in range(5)]
    assert distinct_job_names(JobRun, "default", limit=2) == ["job0", "job1"]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("reports", ["reports.build"]),
        ("celery-abc-123", ["mail.send"]),
        ("library.Book:53", ["cleanup"]),
        ("disk full", ["cleanup"]),
        ("nothing-like-this", []),
    ],
)
def test_search(admin_client, make_run, term, expected):
    make_run("reports.build")
    make_run("mail.send", backend_job_id="celery-abc-123")
    make_run("cleanup", subject="library.Book:53", message="Stopped: disk full on /var")
    response = admin_client.get(URL, {"q": term})
    assert names(response) == expected


def test_search_by_id(admin_client, make_run):
    run = make_run("x.one")
    make_run("x.two")
    response = admin_client.get(URL, {"q": str(run.pk)})
    assert [r.pk for r in response.context["cl"].result_list] == [run.pk]


def test_default_ordering_is_newest_first(admin_client, make_run):
    now = timezone.now()
    make_run("older", created_at=now - timedelta(minutes=5))
    make_run("newer", created_at=now)
    response = admin_client.get(URL)
    assert [r.job_name for r in response.context["cl"].result_list] == [
        "newer",
        "older",
    ]


def test_read_only_no_add(admin_client, make_run):
    assert admin_client.get(f"{URL}add/").status_code == 403
    assert f"{URL}add/" not in admin_client.get(URL).content.decode()


def test_no_full_count_and_no_facets(admin_client, make_run):
    make_run("a")
    response = admin_client.get(URL + "?_facets=1&status=running")
    cl = response.context["cl"]
    assert cl.show_full_result_count is False
    assert cl.model_admin.show_facets.name == "NEVER"
    assert isinstance(cl.paginator, CappedCountPaginator)


def test_capped_count(make_run, monkeypatch):
    for i in range(7):
        make_run(f"j{i}")
    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    assert CappedCountPaginator(JobRun.objects.all(), 2).count == 5
    assert CappedCountPaginator(JobRun.objects.for_job("j1"), 2).count == 1


def test_a_changelist_of_exactly_the_cap_says_its_count_not_cap_plus(
    admin_client, db, monkeypatch
):
    """The count stops at COUNT_CAP (10,000): a filter matching exactly 10,000 runs showed
    "10,000+ job runs" and "Select all 10,000+", as if there were more, because the
    paginator counted ``[:cap]`` and could not tell 10,000 from 10,001. Here with a cap
    of 1,000: one run more is "1,000+" (thousands grouped)."""
    monkeypatch.setattr(CappedCountPaginator, "cap", 1000)
    now = timezone.now()
    JobRun.objects.bulk_create(
        JobRun(job_name="j", created_at=now, queued_at=now) for _ in range(1000)
    )
    response = admin_client.get(URL)
    html = response.content.decode()
    assert "1000 job runs" in html
    assert "1,000+" not in html
    assert response.context["cl"].capped_total == ""
    JobRun.objects.create(job_name="j")
    response = admin_client.get(URL)
    assert "1,000+ job runs" in response.content.decode()
    assert response.context["cl"].capped_total == "1,000+"
    # The pages span the cap, as before: 20 of 50.
    assert response.context["cl"].result_count == 1000
    assert response.context["cl"].paginator.num_pages == 20


def _older_link(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">', html)
    return unescape(found.group(1)) if found else None


def _every_run_listed(client, url: str, params: dict[str, str]) -> list:
    """The runs of every page of ``url`` and of every "Older →" link from them."""
    cl = client.get(url, params).context["cl"]
    seen = []
    for number in range(1, cl.paginator.num_pages + 1):
        page = client.get(url, {**params, "p": number})
        seen += [run.pk for run in page.context["cl"].result_list]
        link = _older_link(page.content.decode())
        while link:
            page = client.get(URL + link)
            seen += [run.pk for run in page.context["cl"].result_list]
            link = _older_link(page.content.decode())
    return seen


def test_a_page_reached_by_older_counts_the_older_runs(admin_client, db):
    """130 runs; the first page's "Older →" leads to the 80 older ones. That page said
    "50 job runs", the rows it lists: the count (80) was overwritten by the page's length."""
    seven_jobs(130)
    first = admin_client.get(URL)
    assert _count_text(first.content.decode()) == "130 job runs"
    link = _older_link(first.content.decode())
    assert link

    page = admin_client.get(URL + link)

    assert page.status_code == 200
    assert len(page.context["cl"].result_list) == 50
    assert _count_text(page.content.decode()) == "80 job runs"
    # Django's "Select all" is still not offered there: it would act on all 130.
    assert page.context["cl"].result_count == 50


@pytest.mark.parametrize("o", ["1", "-1", "5", "1.5"])  # job name, created oldest first
def test_a_sorted_changelist_past_the_cap_says_not_every_run_is_listed(
    admin_client, monkeypatch, o
):
    """Sorted by a column the changelist offers, past the cap the pages stop and no
    "Older →" link goes on (no index serves a keyset in those orders): the jobs late in
    the alphabet, or the newest runs, were never listed, and nothing said so. The pages
    now say so, and link to the newest-first order, which lists every run."""
    monkeypatch.setattr(CappedCountPaginator, "cap", 100)  # 10,000 in production
    seven_jobs(230)
    every = set(JobRun.objects.values_list("pk", flat=True))

    sorted_pages = admin_client.get(URL, {"o": o, "q": "job"})
    html = sorted_pages.content.decode()
    assert "the pages may end before the last of the job runs" in html
    assert _older_link(html) is None
    newest_first = sorted_pages.context["cl"].newest_first_url
    assert f'<a href="{escape(newest_first)}">List newest first</a>' in html
    assert "o=" not in newest_first and "q=job" in newest_first  # the search stays

    seen = _every_run_listed(admin_client, URL + newest_first, {})

    missing = every - set(seen)
    assert not missing, f"{len(missing)} of {len(every)} runs never listed"
    assert "the pages may end" not in admin_client.get(URL).content.decode()
    assert (
        "the pages may end" not in admin_client.get(URL, {"o": "-5"}).content.decode()
    )


def test_changelist_queries_do_not_grow_with_rows(
    admin_client, make_run, django_assert_max_num_queries
):
    for i in range(60):
        make_run(
            f"job{i % 7}",
            status=Status.SUCCEEDED if i % 2 else Status.RUNNING,
            progress_current=1,
            progress_total=3,
        )
    with django_assert_max_num_queries(10):
        response = admin_client.get(URL)
    assert len(response.context["cl"].result_list) == 50
    with django_assert_max_num_queries(10):
        admin_client.get(
            URL, {"status": "running", "job_name": "job3", "created": "24h", "q": "job"}
        )


def test_a_part_of_a_job_name_finds_its_runs_by_name_not_by_message(
    admin_client, make_run
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_run("billing.tasks.sync_ledger")
    make_run("mail.tasks.sync_ledger")
    make_run("mail.tasks.send", message="waiting for sync_ledger")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(URL, {"q": "sync_ledg"})
    assert names(response) == ["billing.tasks.sync_ledger", "mail.tasks.sync_ledger"]
    run_queries = [q["sql"] for q in queries.captured_queries if "jobrun" in q["sql"]]
    assert not any('"message"' in sql and "LIKE" in sql for sql in run_queries)
    # A word no job name holds: the start of a name, or a part of the message.
    assert names(admin_client.get(URL, {"q": "waiting"})) == ["mail.tasks.send"]
    assert names(admin_client.get(URL, {"q": "mail.tasks.se"})) == ["mail.tasks.send"]


@pytest.mark.parametrize(
    ("o", "order"),
    [
        ("2", ("-created_at", "-id")),  # status: no sort link
        ("7", ("-created_at", "-id")),  # source: no sort link
        ("1", ("job_name", "-created_at", "-id")),
        ("5", ("created_at", "-created_at", "-id")),  # created, oldest first
    ],
)
def test_only_the_columns_offered_for_sorting_sort(admin_client, db, o, order):
    """An ?o= naming a column that has no sort link is ignored: no index serves its
    order (sorting a million runs by status took a third of a second)."""
    for name in ("b.job", "a.job", "c.job"):
        JobRun.objects.create(job_name=name)
    response = admin_client.get(URL, {"o": o})
    assert response.status_code == 200
    assert tuple(dict.fromkeys(response.context["cl"].queryset.query.order_by)) == order
