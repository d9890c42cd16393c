"""The count a big changelist states when its first page lists every match (found by a review)."""

from __future__ import annotations

import re

import pytest
from django.db import connection

from django_jobstatus.admin.paginator import CappedCountPaginator
from django_jobstatus.models import JobLog, JobRun, Status
from tests.admin.history import seven_jobs

pytestmark = pytest.mark.postgres

RUNS = "/admin/django_jobstatus/jobrun/"


def _analyze(*models) -> None:
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"ANALYZE {model._meta.db_table}")


@pytest.fixture
def small_cap(monkeypatch):
    """A table above 200 runs is a big one: its filtered counts may be estimates."""
    monkeypatch.setattr(CappedCountPaginator, "cap", 200)


@pytest.fixture
def reset_statistics():
    yield
    JobLog.objects.all().delete()
    JobRun.objects.all().delete()
    _analyze(JobRun, JobLog)


def _count_text(html: str) -> str:
    found = re.search(r'<p class="paginator">(.*?)</p>', html, re.S)
    assert found, "no paginator"
    text = re.sub(
        r"<a [^>]*>.*?</a>|<span class=\"this-page\">.*?</span>", "", found[1]
    )
    text = re.sub(r"<[^>]+>", "", text)
    return " ".join(text.split())


def test_a_first_page_that_lists_every_match_states_the_exact_count(
    admin_client, small_cap, reset_statistics
):
    """The planner estimates 150 succeeded runs (statistics from before most of them
    failed); 3 match, and the first page lists all 3 (fewer than a page from the first
    row: nothing more matches). The page says "about 200 job runs", with page links to
    empty pages, where the count is known. (Past the cap it says "10,000+ job runs".)"""
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
