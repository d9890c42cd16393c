"""Export of the changelist's matches as CSV and JSON Lines: streamed, redacted, filtered."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from html import unescape

import pytest
from django.test import override_settings
from django.utils import timezone

from django_jobstatus.models import Status

URL = "/admin/django_jobstatus/jobrun/"


def _link(html: str, pattern: str) -> str:
    found = re.search(pattern, html)
    assert found, pattern
    return unescape(found.group(1))


def body(response) -> str:
    assert response.status_code == 200
    assert response.streaming
    return b"".join(response.streaming_content).decode()


@override_settings(JOBSTATUS={"REDACT_KEYS": ["password"]})
def test_csv_of_the_filtered_runs_redacted(admin_client, make_run):
    failed = make_run(
        "mail.send",
        status=Status.FAILED,
        params={"to": "a@b.c", "Password": "hunter2"},
        error="=cmd|' /C calc'!A0",
    )
    make_run("mail.send", status=Status.SUCCEEDED)
    make_run("other", status=Status.FAILED)
    response = admin_client.get(
        URL + "export/?job_name=mail.send&status=failed&format=csv"
    )
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert [row["id"] for row in rows] == [str(failed.pk)]
    assert "hunter2" not in rows[0]["params"]
    assert json.loads(rows[0]["params"]) == {"Password": "********", "to": "a@b.c"}
    # A cell a spreadsheet would run as a formula is quoted.
    assert rows[0]["error"].startswith("'=")


@override_settings(JOBSTATUS={"REDACT_KEYS": ["token"]})
def test_jsonl_with_search(admin_client, make_run):
    one = make_run("reports.build", result={"token": "s3cret", "rows": 2})
    make_run("mail.send")
    text = body(admin_client.get(URL + "export/?q=reports&format=jsonl"))
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["id"] for line in lines] == [str(one.pk)]
    assert lines[0]["result"] == {"rows": 2, "token": "********"}
    assert "s3cret" not in text


def test_a_bad_format_is_a_400(admin_client, db):
    response = admin_client.get(URL + "export/?format=xlsx")
    assert response.status_code == 400
    assert b"csv or jsonl" in response.content


def test_export_needs_the_view_permission(staff_client, make_run):
    make_run()
    assert staff_client().get(URL + "export/?format=csv").status_code == 403
    assert (
        staff_client("view_jobrun").get(URL + "export/?format=csv").status_code == 200
    )


def test_the_action_exports_every_match_not_only_the_ticked_rows(
    admin_client, make_run
):
    runs = [make_run("a", status=Status.FAILED) for _ in range(3)]
    make_run("b", status=Status.FAILED)
    response = admin_client.post(
        URL + "?job_name=a",
        {"action": "export_matching_jsonl", "_selected_action": [str(runs[0].pk)]},
    )
    ids = {json.loads(line)["id"] for line in body(response).splitlines()}
    assert ids == {str(run.pk) for run in runs}


def test_the_changelist_links_carry_its_filters(admin_client, make_run):
    make_run()
    page = admin_client.get(URL + "?status=failed").content.decode()
    assert "export/?status=failed&amp;format=csv" in page


def test_from_a_page_reached_by_older_every_match_is_exported(
    admin_client, make_run, monkeypatch
):
    """A page reached through "Older →" carries ``older=`` in its query string: its Export
    link and export actions still export every run the filters match, not only the older
    ones."""
    monkeypatch.setattr("django_jobstatus.admin.runs.JobRunAdmin.list_per_page", 2)
    now = timezone.now()
    runs = [
        make_run(
            "etl.load", status=Status.SUCCEEDED, created_at=now - timedelta(minutes=i)
        )
        for i in range(5)
    ]
    make_run("other", status=Status.SUCCEEDED)
    every = {str(run.pk) for run in runs}
    first = admin_client.get(URL, {"job_name": "etl.load"}).content.decode()
    older = _link(first, r'<a href="([^"]+)" rel="next">')
    assert "older=" in older
    page = admin_client.get(URL + older).content.decode()
    export = _link(page, r'<a href="([^"]+)" class="jobstatus-export"')

    rows = csv.DictReader(io.StringIO(body(admin_client.get(export))))
    assert {row["id"] for row in rows} == every
    response = admin_client.post(
        URL + older,
        {"action": "export_matching_jsonl", "_selected_action": [str(runs[-1].pk)]},
    )
    assert {json.loads(line)["id"] for line in body(response).splitlines()} == every


@pytest.mark.parametrize(
    "query",
    [
        "bogus=1",
        "status=bogus",
        "created_at__gte=not-a-date",
        "parent=not-a-run-id",
    ],
)
def test_bad_filters_go_back_to_the_changelist_not_a_500(admin_client, make_run, query):
    """As the changelist does with them (Django's ?e=1), never a server error."""
    make_run("tests.job")
    response = admin_client.get(f"{URL}export/?{query}&format=csv")
    assert response.status_code == 302
    assert response["Location"] == f"{URL}?e=1"
