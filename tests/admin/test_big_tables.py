"""PostgreSQL: the changelists stay right when the count is PostgreSQL's estimate.

A page never lists more than its size, even when the estimate says a search matches
fewer rows than a page; every row stays reachable when the estimate is below the real
count (the last page holds the oldest rows, and "older" links walk past any count).
"""

from __future__ import annotations

import re
from html import escape, unescape

import pytest
from django.contrib.admin.views.main import PAGE_VAR
from django.db import connection

from django_jobstatus.admin.paginator import CappedCountPaginator
from django_jobstatus.models import JobLog, JobRun, Status
from tests.admin.history import seven_jobs

pytestmark = pytest.mark.postgres

RUNS = "/admin/django_jobstatus/jobrun/"
LOGS = "/admin/django_jobstatus/joblog/"


def _analyze(*models) -> None:
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"ANALYZE {model._meta.db_table}")


@pytest.fixture
def small_cap(monkeypatch):
    """Counts above 5 rows come from PostgreSQL's estimate, as on a big table."""
    monkeypatch.setattr(CappedCountPaginator, "cap", 5)


@pytest.fixture
def reset_statistics():
    # ANALYZE's figures outlive the test's transaction: reset them for the next tests.
    yield
    JobLog.objects.all().delete()
    JobRun.objects.all().delete()
    _analyze(JobRun, JobLog)


def test_a_search_the_estimate_calls_rare_lists_one_page_and_links_to_more(
    admin_client, small_cap, reset_statistics
):
    run = seven_jobs(1)[0]
    JobLog.objects.bulk_create(
        JobLog(run=run, message=f"retrying upstream after HTTP 503, try {i}")
        for i in range(400)
    )
    _analyze(JobRun, JobLog)

    response = admin_client.get(LOGS, {"q": "retrying 503"})

    assert response.status_code == 200
    cl = response.context["cl"]
    assert len(cl.result_list) == cl.list_per_page == 100  # not all 400
    assert cl.older_url
    assert 'rel="next"' in response.content.decode()
    # "Show all" stops at its own page size too.
    response = admin_client.get(LOGS, {"q": "retrying 503", "all": ""})
    assert len(response.context["cl"].result_list) <= 200


def _older_link(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">', html)
    return unescape(found.group(1)) if found else None


def test_every_run_is_reachable_when_the_estimate_is_below_the_real_count(
    admin_client, small_cap, reset_statistics
):
    seven_jobs(130)
    _analyze(JobRun)  # the estimate: 130
    seven_jobs(40, start=130)  # 40 older runs the statistics do not know about
    every = set(JobRun.objects.values_list("pk", flat=True))
    oldest = JobRun.objects.order_by("created_at", "id").first()

    first = admin_client.get(RUNS)
    cl = first.context["cl"]
    assert cl.result_count == 130  # the estimate
    last = admin_client.get(RUNS, {"p": cl.paginator.num_pages})
    # The last page holds the oldest runs, as many as the count leaves (130 - 100).
    assert [run.pk for run in last.context["cl"].result_list][-1] == oldest.pk
    assert len(last.context["cl"].result_list) == 30

    # Walking the "older" links from the first page reaches every run, each once.
    seen = [run.pk for run in cl.result_list]
    link = _older_link(first.content.decode())
    while link:
        page = admin_client.get(RUNS + link)
        assert page.status_code == 200
        seen += [run.pk for run in page.context["cl"].result_list]
        link = _older_link(page.content.decode())
    assert len(seen) == len(set(seen))
    assert set(seen) == every


def test_select_all_on_an_estimated_count_names_no_number(
    admin_client, small_cap, reset_statistics
):
    """When the count is the planner's estimate of a search's matches (a few, where 130
    match), "Select all" acts on every match: the action bar names no number."""
    seven_jobs(130)
    _analyze(JobRun)  # statistics from before the runs said "retrying"
    JobRun.objects.update(message="retrying upstream after HTTP 503")

    response = admin_client.get(RUNS, {"q": "retrying"})

    cl = response.context["cl"]
    assert cl.paginator.estimated and cl.result_count < len(cl.result_list)
    html = response.content.decode()
    assert "Select all matching job runs" in html
    assert "All matching job runs selected" in html
    assert f"Select all {cl.result_count} job runs" not in html


def _count_text(html: str) -> str:
    """The count the paginator states, as a person reads it ("130 job runs")."""
    found = re.search(r'<p class="paginator">(.*?)</p>', html, re.S)
    assert found, "no paginator"
    text = re.sub(
        r"<a [^>]*>.*?</a>|<span class=\"this-page\">.*?</span>", "", found[1]
    )
    text = re.sub(r"<[^>]+>", "", text)
    return " ".join(text.split())


def test_an_estimated_count_is_never_stated_as_an_exact_count(
    admin_client, small_cap, reset_statistics
):
    """130 runs match a search; the planner's estimate is 1 (statistics from before the
    runs said it). The page read "1 job run" above 50 listed runs: now "50+ job runs"."""
    seven_jobs(130)
    _analyze(JobRun)
    JobRun.objects.update(message="retrying upstream after HTTP 503")

    response = admin_client.get(RUNS, {"q": "retrying"})

    assert response.status_code == 200
    listed = len(response.context["cl"].result_list)
    assert listed == 50
    text = _count_text(response.content.decode())
    assert not re.fullmatch(r"[\d,]+ job runs?", text), f"{text!r} is an estimate"
    numbers = [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]
    assert all(n >= listed for n in numbers), f"{text!r} above {listed} listed runs"
    assert text == "50+ job runs"


def test_the_pages_of_an_estimated_count_list_each_run_once(
    admin_client, small_cap, reset_statistics
):
    """The estimate is exactly right (130 runs, pages of 50): the last page read a full
    page of the oldest runs, so 20 runs were on both page 2 and page 3."""
    seven_jobs(130)
    _analyze(JobRun)

    first = admin_client.get(RUNS).context["cl"]
    assert first.paginator.estimated and first.result_count == 130
    seen = []
    for number in range(1, first.paginator.num_pages + 1):
        page = admin_client.get(RUNS, {"p": number})
        assert page.status_code == 200
        assert len(page.context["cl"].result_list) <= 50
        seen += [run.pk for run in page.context["cl"].result_list]

    assert set(seen) == set(JobRun.objects.values_list("pk", flat=True))
    twice = len(seen) - len(set(seen))
    assert twice == 0, (
        f"{twice} runs shown on two pages ({len(seen)} rows for 130 runs)"
    )


def test_deep_pages_are_the_pages_offset_would_give(admin_client, monkeypatch):
    from django_jobstatus.admin import paginator

    monkeypatch.setattr(
        paginator, "DEEP", 60
    )  # index-only first rows from the third page
    seven_jobs(260)
    expected = list(JobRun.objects.order_by("-created_at", "-id"))
    for number in range(1, 7):
        page = admin_client.get(RUNS, {"p": number}).context["cl"].result_list
        assert list(page) == expected[(number - 1) * 50 : number * 50], number


def test_a_first_page_that_lists_every_match_states_the_exact_count(
    admin_client, monkeypatch, reset_statistics
):
    """A table above 200 runs is a big one (found by a review). The planner estimates 150 succeeded runs (statistics from before most of them
    failed); 3 match, and the first page lists all 3 (fewer than a page from the first
    row: nothing more matches). The page says "about 200 job runs", with page links to
    empty pages, where the count is known. (Past the cap it says "10,000+ job runs".)"""
    monkeypatch.setattr(CappedCountPaginator, "cap", 200)
    runs = seven_jobs(300)
    JobRun.objects.filter(pk__in=[r.pk for r in runs[150:]]).update(
        status=Status.FAILED
    )
    _analyze(JobRun)
    JobRun.objects.filter(pk__in=[r.pk for r in runs[3:150]]).update(
        status=Status.FAILED
    )

    response = admin_client.get(RUNS, {"status": Status.SUCCEEDED})

    assert response.status_code == 200
    cl = response.context["cl"]
    assert cl.paginator.estimated  # the setup: the count is the planner's estimate
    assert len(cl.result_list) == 3
    text = _count_text(response.content.decode())
    assert text == "3 job runs", f"every match is listed (3), the page says {text!r}"


def test_a_numbered_page_after_show_all_lists_that_pages_runs(admin_client):
    """ "Show all" on a filter matching 100 runs, then the job filter's "All": the URL keeps
    ``all=`` and 700 runs match, more than "Show all" may list, so Django pages them with
    page links that keep ``all=``. Every one of those pages listed the first 50 runs
    again: no page link reached a run past the first page."""
    seven_jobs(700)
    newest_first = list(
        JobRun.objects.order_by("-created_at", "-id").values_list("pk", flat=True)
    )

    filtered = admin_client.get(RUNS, {"job_name": "job0"})
    assert filtered.status_code == 200
    assert filtered.context["cl"].result_count == 100
    show_all = re.search(
        r'<a href="([^"]*all=[^"]*)" class="showall">', filtered.content.decode()
    )
    assert show_all, "the changelist offers Show all for 100 runs"
    shown_all = admin_client.get(RUNS + unescape(show_all[1]))
    assert len(shown_all.context["cl"].result_list) == 100

    # The job filter's "All" keeps all= (as every filter link does).
    assert 'href="?all="' in shown_all.content.decode()
    everything = admin_client.get(RUNS + "?all=")
    cl = everything.context["cl"]
    assert cl.result_count == 700 and not cl.can_show_all
    # Page 2's link as the paginator renders it (paginator_number): it keeps all=.
    link = cl.get_query_string({PAGE_VAR: 2})
    assert "all=" in link and escape(link) in everything.content.decode()

    page_two = admin_client.get(RUNS + link)
    assert page_two.status_code == 200
    listed = [run.pk for run in page_two.context["cl"].result_list]
    assert listed == newest_first[50:100], (
        f"page 2 lists runs {newest_first.index(listed[0]) + 1}-"
        f"{newest_first.index(listed[-1]) + 1}, not 51-100"
    )
