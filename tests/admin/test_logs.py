"""The JobLog changelist: level and time filters, search, the link back to the run."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from django_jobstatus.models import JobLog

URL = "/admin/django_jobstatus/joblog/"


def messages(response) -> list[str]:
    return sorted(line.message for line in response.context["cl"].result_list)


def test_filters_search_and_run_link(admin_client, make_run):
    run = make_run("a")
    other = make_run("b")
    run.log(logging.INFO, "hello world")
    run.log(logging.ERROR, "it broke")
    other.log(logging.WARNING, "careful")
    JobLog.objects.create(
        run=other,
        level=logging.INFO,
        message="old line",
        created_at=timezone.now() - timedelta(days=3),
    )
    assert messages(admin_client.get(URL)) == [
        "careful",
        "hello world",
        "it broke",
        "old line",
    ]
    assert messages(admin_client.get(URL, {"level": "30"})) == ["careful", "it broke"]
    assert messages(admin_client.get(URL, {"created": "24h"})) == [
        "careful",
        "hello world",
        "it broke",
    ]
    assert messages(admin_client.get(URL, {"q": "broke"})) == ["it broke"]
    assert messages(admin_client.get(URL, {"run": str(run.pk)})) == [
        "hello world",
        "it broke",
    ]
    html = admin_client.get(URL).content.decode()
    assert f'href="/admin/django_jobstatus/jobrun/{run.pk}/change/"' in html
    assert 'class="jobstatus-level jobstatus-level-error">ERROR<' in html


def test_read_only(admin_client, make_run):
    run = make_run("a")
    line = run.log(logging.INFO, "x")
    assert admin_client.get(f"{URL}add/").status_code == 403
    assert (
        admin_client.post(f"{URL}{line.pk}/change/", {"message": "y"}).status_code
        == 403
    )
    line.refresh_from_db()
    assert line.message == "x"


def test_queries_bounded(admin_client, make_run, django_assert_max_num_queries):
    runs = [make_run(f"job{i}") for i in range(5)]
    JobLog.objects.bulk_create(
        JobLog(run=runs[i % 5], level=20, message=f"m{i}") for i in range(150)
    )
    with django_assert_max_num_queries(8):
        response = admin_client.get(URL)
    assert len(response.context["cl"].result_list) == 100
