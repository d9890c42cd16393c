"""A run's live JSON: status, progress (0 to 1), step, message and the new log lines."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

from django.utils import timezone

from django_jobstatus.admin.live import TAIL
from django_jobstatus.models import JobLog, Status

URL = "/admin/django_jobstatus/jobrun/"


def test_live_json(admin_client, make_run):
    run = make_run(
        "imports", progress_current=3, progress_total=12, step="load", message="3 of 12"
    )
    first = run.log(20, "one")
    run.log(40, "two <b>")
    data = admin_client.get(f"{URL}{run.pk}/live/").json()
    assert data["run"]["status"] == Status.RUNNING
    assert data["run"]["is_active"] is True
    assert data["run"]["progress"] == 0.25
    assert (data["run"]["step"], data["run"]["message"]) == ("load", "3 of 12")
    assert [line["message"] for line in data["logs"]] == ["one", "two <b>"]
    newer = admin_client.get(f"{URL}{run.pk}/live/?after={first.pk}").json()
    assert [line["message"] for line in newer["logs"]] == ["two <b>"]
    errors = admin_client.get(f"{URL}{run.pk}/live/?log_level=40").json()
    assert [line["level_name"] for line in errors["logs"]] == ["ERROR"]
    run.mark_succeeded()
    assert admin_client.get(f"{URL}{run.pk}/live/").json()["run"]["is_active"] is False


def test_polling_as_run_js_does_delivers_every_line_however_many_arrive(
    admin_client, run
):
    """More than TAIL lines between two polls (a busy job, or a hidden tab): each answer
    carries the oldest lines after ``?after=`` and says ``more``; run.js asks again at once
    from the last line it was given, and every line reaches the page, in order, once."""
    run.log(logging.INFO, "before the page was opened")
    page = admin_client.get(f"{URL}{run.pk}/change/").content.decode()
    first = JobLog.objects.for_run(run).get()
    assert f'data-after="{first.pk}"' in page  # where run.js starts
    for i in range(2 * TAIL + 20):
        run.log(logging.INFO, f"row {i}")
    expected = list(
        JobLog.objects.for_run(run)
        .exclude(pk=first.pk)
        .order_by("id")
        .values_list("pk", flat=True)
    )

    after, delivered, answers = first.pk, [], []
    while len(answers) < 10:
        data = admin_client.get(f"{URL}{run.pk}/live/", {"after": after}).json()
        answers.append((len(data["logs"]), data["more"]))
        delivered += [line["id"] for line in data["logs"]]
        if not data["more"]:
            break
        after = data["logs"][-1]["id"]
    assert answers == [(TAIL, True), (TAIL, True), (20, False)]
    assert delivered == expected


def test_live_json_needs_the_view_permission(staff_client, make_run):
    run = make_run()
    assert staff_client().get(f"{URL}{run.pk}/live/").status_code == 403
    assert staff_client("view_jobrun").get(f"{URL}{run.pk}/live/").status_code == 200


def test_live_json_of_a_missing_run_is_404(admin_client, db):
    assert admin_client.get(f"{URL}nope/live/").status_code == 404
    assert (
        admin_client.get(f"{URL}0190c3d2-8f1e-7a2b-9c4d-1234567890ab/live/").status_code
        == 404
    )


def test_the_run_page_carries_the_live_root(admin_client, make_run):
    active = make_run()
    body = admin_client.get(f"{URL}{active.pk}/change/").content.decode()
    assert 'id="jobstatus-live-run"' in body and 'data-active="true"' in body
    assert 'id="jobstatus-follow"' in body
    assert "js/run.js" in body
    done = make_run(status=Status.SUCCEEDED)
    body = admin_client.get(f"{URL}{done.pk}/change/").content.decode()
    assert 'data-active="false"' in body and 'id="jobstatus-follow"' not in body


def test_the_live_tail_repeats_no_line_the_page_already_shows(admin_client, run):
    """A log line carries the clock of the process that wrote it: a worker 30 s ahead
    wrote one line, then this attempt's worker another. The page shows both, and its
    tail started after the line newest by time, not after the highest id (the order
    ``?after=`` counts in): the first poll handed back a line the page showed already."""
    JobLog.objects.create(
        run=run,
        created_at=timezone.now() + timedelta(seconds=30),
        level=logging.INFO,
        message="from the worker whose clock is ahead",
    )
    run.log(logging.INFO, "from this attempt's worker")
    page = admin_client.get(f"{URL}{run.pk}/change/").content.decode()
    assert "from the worker whose clock is ahead" in page
    assert "from this attempt&#x27;s worker" in page
    after = re.search(r'data-after="(\d*)"', page).group(1)
    data = admin_client.get(f"{URL}{run.pk}/live/", {"after": after}).json()
    assert [line["message"] for line in data["logs"]] == []
    run.log(logging.INFO, "a new line")
    data = admin_client.get(f"{URL}{run.pk}/live/", {"after": after}).json()
    assert [line["message"] for line in data["logs"]] == ["a new line"]
