"""The failures view: failed and lost runs grouped by job and cause, retried or deleted per group."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from django_jobstatus.models import JobLog, JobRun, Status

URL = "/admin/django_jobstatus/jobrun/failures/"


def fail(make_run, job_name, error, **fields):
    run = make_run(job_name, status=Status.RUNNING, **fields)
    run.mark_failed(error=error)
    return run


@pytest.fixture
def backend(retry_backend):
    return retry_backend


def test_groups_with_counts_and_a_link_to_their_runs(admin_client, make_run):
    for user in (1, 2, 3):
        fail(make_run, "mail.send", f"ConnectionError: smtp refused user {user}")
    fail(make_run, "mail.send", "KeyError: 'template_9'")
    other = fail(make_run, "report.build", "ConnectionError: smtp refused user 4")
    make_run("mail.send", status=Status.SUCCEEDED)
    response = admin_client.get(URL)
    assert response.status_code == 200
    groups = {
        (g["job_name"], g["error_fingerprint"]): g["count"]
        for g in response.context["groups"]
    }
    assert groups == {
        ("mail.send", "ConnectionError: smtp refused user <n>"): 3,
        ("mail.send", "KeyError: '…'"): 1,
        ("report.build", "ConnectionError: smtp refused user <n>"): 1,
    }
    body = response.content.decode()
    assert "ConnectionError: smtp refused user &lt;n&gt;" in body
    assert "0\xa0minutes ago" not in body and "0 minutes ago" not in body
    group = next(
        g for g in response.context["groups"] if g["job_name"] == "report.build"
    )
    listed = admin_client.get(group["url"])
    assert listed.status_code == 200
    assert [run.pk for run in listed.context["cl"].result_list] == [other.pk]


def test_a_group_without_error_text_links_to_its_runs_only(admin_client, make_run):
    """A run failed without an exception has an empty cause: its group's link
    (``?error_fingerprint=``) lists that group's runs, not every run of the job."""
    failed, again = (make_run("mail.send", status=Status.RUNNING) for _ in range(2))
    failed.mark_failed()
    again.mark_failed()
    fail(make_run, "mail.send", "KeyError: 'template_9'")
    make_run("mail.send", status=Status.SUCCEEDED)
    make_run("mail.send")

    groups = admin_client.get(URL).context["groups"]
    group = next(g for g in groups if g["error_fingerprint"] == "")
    assert (group["job_name"], group["count"]) == ("mail.send", 2)
    listed = admin_client.get(group["url"])
    assert listed.status_code == 200
    shown = {run.pk for run in listed.context["cl"].result_list}
    assert shown == {failed.pk, again.pk}
    assert "(no error text)" in listed.content.decode()  # the filter says which cause


def test_the_window_bounds_the_groups(admin_client, make_run):
    run = fail(make_run, "old.job", "ValueError: x")
    JobRun.objects.filter(pk=run.pk).update(
        finished_at=timezone.now() - timedelta(days=3)
    )
    assert admin_client.get(URL).context["groups"] == []
    assert len(admin_client.get(URL + "?window=7d").context["groups"]) == 1


def test_grouping_is_one_query(admin_client, make_run, django_assert_max_num_queries):
    for i in range(30):
        fail(make_run, f"job{i % 3}", f"ValueError: row {i}")
    # Session, user, and the one aggregate: not one query per run or per group.
    with django_assert_max_num_queries(4):
        response = admin_client.get(URL)
    assert len(response.context["groups"]) == 3
    assert response.context["total"] == 30
    assert "groups seen last" not in response.content.decode()


def test_the_total_counts_the_failures_of_groups_left_out(
    admin_client, db, django_assert_max_num_queries
):
    """Past GROUPS_LIMIT (200) groups in the window, the page opened with "200 failed or
    lost runs" for 250 failed runs of 250 causes, and nothing said that groups were left
    out: the total was the sum of the groups shown."""
    now = timezone.now()
    JobRun.objects.bulk_create(
        JobRun(
            job_name=f"jobs.n{index:03d}",
            status=Status.FAILED,
            created_at=now,
            queued_at=now,
            started_at=now,
            finished_at=now,
            error="ValueError: bad",
            error_fingerprint="ValueError: bad",
        )
        for index in range(250)
    )
    # Session, user, the aggregate and the count of the window's failures.
    with django_assert_max_num_queries(5):
        response = admin_client.get(URL)
    assert response.status_code == 200
    assert len(response.context["groups"]) == 200
    assert response.context["total"] == 250
    body = response.content.decode()
    assert "250 failed or lost runs" in body
    assert "Only the 200 groups seen last are listed (200 of these runs)." in body


def test_retry_all_of_a_group(admin_client, make_run, backend):
    runs = [
        fail(
            make_run,
            "mail.send",
            f"ConnectionError: refused {i}",
            source="tests_backend",
        )
        for i in range(3)
    ]
    fail(make_run, "mail.send", "ConnectionError: refused 9", source="command")
    fail(make_run, "mail.send", "KeyError: other", source="tests_backend")
    group = next(
        g
        for g in admin_client.get(URL).context["groups"]
        if g["error_fingerprint"] == "ConnectionError: refused <n>"
    )
    assert group["can_retry"] and group["retryable"] == 3
    response = admin_client.post(
        URL + "retry/",
        {"job_name": "mail.send", "fingerprint": group["error_fingerprint"]},
        follow=True,
    )
    said = [str(m) for m in response.context["messages"]]
    assert sorted(backend) == sorted(run.pk for run in runs)
    assert "Enqueued 3 runs again." in said
    assert any("cannot be retried" in m and "command" in m for m in said)


def test_retry_reports_the_brokers_error(admin_client, make_run, backend):
    fail(make_run, "x", "E: 1", source="tests_backend", params={"broken": True})
    response = admin_client.post(
        URL + "retry/", {"job_name": "x", "fingerprint": "E: <n>"}, follow=True
    )
    said = [str(m) for m in response.context["messages"]]
    assert any("Error 111" in m for m in said)


def test_no_retry_button_where_nothing_can_retry(admin_client, make_run):
    fail(make_run, "x", "E: 1", source="command")
    response = admin_client.get(URL)
    assert response.context["groups"][0]["can_retry"] is False
    assert "jobstatus-retry-group" not in response.content.decode()


def test_delete_all_asks_then_deletes_only_the_group(admin_client, make_run):
    doomed = [fail(make_run, "x", f"E: {i}") for i in range(2)]
    doomed[0].log(40, "boom")
    kept = fail(make_run, "x", "Other: 1")
    running = make_run("x", status=Status.RUNNING, error_fingerprint="E: <n>")
    data = {"job_name": "x", "fingerprint": "E: <n>"}
    confirm = admin_client.post(URL + "delete/", data)
    assert confirm.status_code == 200
    assert confirm.context["count"] == 2
    assert JobRun.objects.count() == 4
    response = admin_client.post(
        URL + "delete/", {**data, "confirm": "yes"}, follow=True
    )
    assert "Deleted 2 runs." in [str(m) for m in response.context["messages"]]
    assert set(JobRun.objects.values_list("pk", flat=True)) == {kept.pk, running.pk}
    assert not JobLog.objects.exists()


def test_delete_all_goes_in_short_batches(admin_client, make_run, monkeypatch):
    """A group may hold thousands of runs: they go in the purge's batches, each a short
    transaction, not in one ORM delete that reads them all first."""
    from django_jobstatus import retention, statements

    doomed = [fail(make_run, "x", f"E: {i}") for i in range(12)]
    monkeypatch.setattr(retention, "FIRST_BATCH", 2)
    batches = []
    write_transaction = statements.write_transaction

    def counted(db):
        batches.append(db)
        return write_transaction(db)

    monkeypatch.setattr(statements, "write_transaction", counted)
    data = {"job_name": "x", "fingerprint": "E: <n>", "confirm": "yes"}
    response = admin_client.post(URL + "delete/", data, follow=True)
    assert "Deleted 12 runs." in [str(m) for m in response.context["messages"]]
    assert not JobRun.objects.filter(pk__in=[run.pk for run in doomed]).exists()
    assert len(batches) >= 3  # 2, then up to twice as many each time


def test_permissions(staff_client, make_run):
    fail(make_run, "x", "E: 1")
    assert staff_client().get(URL).status_code == 403
    viewer = staff_client("view_jobrun")
    assert viewer.get(URL).status_code == 200
    data = {"job_name": "x", "fingerprint": "E: <n>", "confirm": "yes"}
    assert viewer.post(URL + "delete/", data).status_code == 403
    assert viewer.post(URL + "retry/", data).status_code == 403
    assert JobRun.objects.count() == 1
    assert viewer.get(URL + "delete/").status_code == 405


def test_a_group_without_its_job_is_a_400(admin_client, make_run):
    fail(make_run, "x", "E: 1")
    for action in ("retry/", "delete/"):
        response = admin_client.post(
            URL + action, {"fingerprint": "E: <n>", "confirm": "yes"}
        )
        assert response.status_code == 400
    assert JobRun.objects.count() == 1


@pytest.mark.parametrize(
    ("action", "group"),
    [
        ("retry/", {"job_name": "x\x00"}),
        ("delete/", {"job_name": "x\x00"}),
        ("delete/", {"job_name": "x", "fingerprint": "E: <n>\x00"}),
    ],
)
def test_a_group_with_a_nul_is_a_400(admin_client, make_run, backend, action, group):
    """PostgreSQL cannot compare NUL: the admin's rule for lookups (holds_nul), not a 500."""
    fail(make_run, "x", "E: 1", source="tests_backend")
    admin_client.raise_request_exception = False
    response = admin_client.post(URL + action, {**group, "confirm": "yes"})
    assert response.status_code == 400
    assert JobRun.objects.count() == 1
    assert backend == []
