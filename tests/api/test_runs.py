"""GET runs/ and runs/<id>/: fields, filters, ordering and cursor pagination."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_jobstatus.models import JobRun, Status
from tests.api.conftest import BASE

pytestmark = pytest.mark.django_db


def ids(response):
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def test_detail_has_every_field_and_the_derived_values(api, make_run):
    now = timezone.now()
    run = make_run(
        "reports.build",
        status=Status.SUCCEEDED,
        queued_at=now - timedelta(seconds=30),
        started_at=now - timedelta(seconds=20),
        finished_at=now - timedelta(seconds=5),
        progress_current=3,
        progress_total=4,
        subject="library.Book:53",
    )
    body = api.get(f"{BASE}{run.pk}/").json()
    model_fields = {field.name for field in JobRun._meta.concrete_fields}
    assert model_fields <= set(body)
    assert body["id"] == str(run.pk)
    assert body["progress"] == 0.75
    assert body["duration"] == 15.0
    assert body["waiting"] == 10.0
    assert body["is_finished"] is True
    assert body["is_active"] is False
    assert body["kill_requested"] is False
    assert body["logs_url"] == f"http://testserver{BASE}{run.pk}/logs/"
    assert (
        body["admin_url"]
        == f"http://testserver/admin/django_jobstatus/jobrun/{run.pk}/change/"
    )


@pytest.mark.urls("tests.api.urls_without_admin")
def test_admin_url_is_null_when_the_admin_is_not_mounted(api, run):
    body = api.get(f"{BASE}{run.pk}/").json()
    assert body["admin_url"] is None
    assert body["logs_url"].endswith(f"/runs/{run.pk}/logs/")


def test_sensitive_keys_are_masked_at_any_depth(api, make_run):
    run = make_run(
        params={"user": 7, "password": "hunter2", "nested": [{"api_key": "k"}]},
        data={"Authorization": "Bearer x"},
        result={"token": "t", "ok": True},
    )
    body = api.get(f"{BASE}{run.pk}/").json()
    assert body["params"] == {
        "user": 7,
        "password": "********",
        "nested": [{"api_key": "********"}],
    }
    assert body["data"] == {"Authorization": "********"}
    assert body["result"] == {"token": "********", "ok": True}
    assert "hunter2" not in api.get(BASE).content.decode()


def test_unknown_and_malformed_ids_are_404(api):
    assert api.get(f"{BASE}0190b6f4-0000-7000-8000-000000000000/").status_code == 404
    response = api.get(f"{BASE}not-a-uuid/")
    assert response.status_code == 404
    assert "not a run id" in response.json()["detail"]


def test_list_is_newest_first_and_costs_a_fixed_number_of_queries(
    api, make_run, django_assert_max_num_queries
):
    now = timezone.now()
    runs = [
        make_run(f"job{i}", created_at=now - timedelta(minutes=i)) for i in range(5)
    ]
    with django_assert_max_num_queries(3):
        response = api.get(BASE)
    assert ids(response) == [str(run.pk) for run in runs]


def test_cursor_pages_walk_forward_and_back_without_gaps(api, make_run):
    now = timezone.now()
    # Equal created_at values force the id tie-breaker.
    runs = [make_run(created_at=now - timedelta(minutes=i // 2)) for i in range(7)]
    expected = [
        str(run.pk)
        for run in sorted(runs, key=lambda r: (r.created_at, r.pk), reverse=True)
    ]
    seen, url, pages = [], f"{BASE}?page_size=3", []
    while url:
        body = api.get(url).json()
        pages.append(body)
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert seen == expected
    assert [len(page["results"]) for page in pages] == [3, 3, 1]
    assert pages[0]["previous"] is None
    back = api.get(pages[2]["previous"]).json()
    assert [row["id"] for row in back["results"]] == expected[3:6]
    first = api.get(back["previous"]).json()
    assert [row["id"] for row in first["results"]] == expected[:3]
    assert first["previous"] is None


ORDERINGS = [
    "created_at",
    "-created_at",
    "started_at",
    "-started_at",
    "finished_at",
    "-finished_at",
    "duration",
    "-duration",
    "job_name",
    "-job_name",
]


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_every_ordering_pages_through_all_runs_in_order_with_nulls_largest(
    api, make_run, ordering
):
    now = timezone.now()
    runs = []
    for i in range(6):
        status = (
            Status.QUEUED if i == 0 else Status.RUNNING if i == 1 else Status.SUCCEEDED
        )
        started = None if i == 0 else now - timedelta(minutes=10 + i)
        finished = now - timedelta(minutes=i) if i > 1 else None
        runs.append(
            make_run(
                f"job{i % 3}",
                status=status,
                started_at=started,
                finished_at=finished,
                created_at=now - timedelta(minutes=20 + i % 4),
            )
        )
    runs.append(
        make_run(
            "job9",
            status=Status.QUEUED,
            started_at=None,
            finished_at=None,
            created_at=now,
        )
    )
    key = ordering.lstrip("-")

    def sort_key(run):
        value = (
            (run.finished_at - run.started_at)
            if key == "duration" and run.started_at and run.finished_at
            else None
            if key == "duration"
            else getattr(run, key)
        )
        return (value is None, value if value is not None else 0, run.pk)

    expected = [
        str(run.pk)
        for run in sorted(runs, key=sort_key, reverse=ordering.startswith("-"))
    ]
    seen, url = [], f"{BASE}?page_size=2&ordering={ordering}"
    while url:
        body = api.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert seen == expected


LISTED = "queued,running,succeeded"


def listed_runs(api, make_run, ordering):
    """Six listed runs with ties and NULLs on every ordering; their ids in ``ordering``.

    A page's edge then falls on a NULL (``-finished_at``, ``-duration``), on a value, and
    on a tie broken by the id (``created_at`` in pairs, one ``job_name``).
    """
    now = timezone.now()
    for i in range(6):
        status = (
            Status.QUEUED if i == 0 else Status.RUNNING if i < 3 else Status.SUCCEEDED
        )
        make_run(
            status=status,
            created_at=now - timedelta(minutes=i // 2),
            started_at=None if i == 0 else now - timedelta(minutes=20 + i),
            finished_at=now - timedelta(minutes=i) if i >= 3 else None,
        )
    return ids(api.get(BASE, {"status": LISTED, "ordering": ordering, "page_size": 6}))


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_the_previous_link_of_an_emptied_page_lists_the_runs_before_it(
    api, make_run, ordering
):
    """Page 1 lists runs 1-2 and links to the next page; runs 3-6 end before the client
    follows it, so that page is empty. Its previous link must list runs 1 and 2 again: it
    listed run 1 alone, as the empty page's cursor (run 2's) was read as "before run 2"."""
    order = listed_runs(api, make_run, ordering)
    query = {"status": LISTED, "ordering": ordering, "page_size": 2}
    first = api.get(BASE, query).json()
    assert [row["id"] for row in first["results"]] == order[:2]
    JobRun.objects.filter(pk__in=order[2:]).update(status=Status.FAILED)

    emptied = api.get(first["next"]).json()
    assert emptied["results"] == []
    assert emptied["previous"], "a page after page 1 links back"
    assert ids(api.get(emptied["previous"])) == order[:2]


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_the_next_link_of_an_emptied_previous_page_lists_the_runs_after_it(
    api, make_run, ordering
):
    """The same going back: page 2 lists runs 3-4; runs 1-2 end, so its previous page is
    empty, and that page's next link must list runs 3 and 4 again. It started after run 3."""
    order = listed_runs(api, make_run, ordering)
    query = {"status": LISTED, "ordering": ordering, "page_size": 2}
    second = api.get(api.get(BASE, query).json()["next"]).json()
    assert [row["id"] for row in second["results"]] == order[2:4]
    JobRun.objects.filter(pk__in=order[:2]).update(status=Status.FAILED)

    emptied = api.get(second["previous"]).json()
    assert emptied["results"] == []
    assert emptied["next"], "a page before page 2 links forward"
    assert ids(api.get(emptied["next"])) == order[2:4]


def test_an_emptied_page_s_cursor_is_still_checked(api, make_run):
    """The flag that makes an emptied page's link start at its cursor's row ("x") is
    part of the cursor, and checked like the rest: anything but a boolean is a 400."""
    from urllib.parse import parse_qs, urlsplit

    order = listed_runs(api, make_run, "-created_at")
    first = api.get(BASE, {"status": LISTED, "page_size": 2}).json()
    JobRun.objects.filter(pk__in=order[2:]).update(status=Status.FAILED)
    previous = api.get(first["next"]).json()["previous"]
    query = parse_qs(urlsplit(previous).query)
    raw = query["cursor"][0]
    payload = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    assert payload["x"] is True
    payload["x"] = "yes"
    query["cursor"] = [base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()]
    response = api.get(BASE, query)
    assert response.status_code == 400
    assert "cursor" in response.json()


def test_status_filter_takes_one_a_list_or_a_group(api, make_run):
    queued = make_run(status=Status.QUEUED)
    running = make_run(status=Status.RUNNING)
    failed = make_run(status=Status.FAILED)
    succeeded = make_run(status=Status.SUCCEEDED)
    assert set(ids(api.get(f"{BASE}?status=failed"))) == {str(failed.pk)}
    assert set(ids(api.get(f"{BASE}?status=failed,succeeded"))) == {
        str(failed.pk),
        str(succeeded.pk),
    }
    assert set(ids(api.get(f"{BASE}?status=active"))) == {
        str(queued.pk),
        str(running.pk),
    }
    assert set(ids(api.get(f"{BASE}?status=finished,queued"))) == {
        str(queued.pk),
        str(failed.pk),
        str(succeeded.pk),
    }


def test_job_name_source_subject_filters(api, make_run):
    a = make_run("a", source="celery", subject="library.Book:1")
    b = make_run("b", source="rq", subject="library.Book:2")
    make_run("c")
    assert set(ids(api.get(f"{BASE}?job_name=a,b"))) == {str(a.pk), str(b.pk)}
    assert ids(api.get(f"{BASE}?job_name=b")) == [str(b.pk)]
    assert ids(api.get(f"{BASE}?source=celery")) == [str(a.pk)]
    assert ids(api.get(f"{BASE}?subject=library.Book:2")) == [str(b.pk)]


def test_owner_parent_has_errors_kill_requested_filters(api, make_run, make_user):
    user = make_user()
    parent = make_run("batch")
    child = make_run("part", parent=parent, owner=user, has_errors=True)
    asked = make_run("asked", kill_requested_at=timezone.now())
    assert ids(api.get(f"{BASE}?owner={user.pk}")) == [str(child.pk)]
    assert ids(api.get(f"{BASE}?parent={parent.pk}")) == [str(child.pk)]
    assert ids(api.get(f"{BASE}?has_errors=true")) == [str(child.pk)]
    assert str(child.pk) not in ids(api.get(f"{BASE}?has_errors=false"))
    assert ids(api.get(f"{BASE}?kill_requested=true")) == [str(asked.pk)]
    assert set(ids(api.get(f"{BASE}?kill_requested=false"))) == {
        str(parent.pk),
        str(child.pk),
    }


def test_date_filters_take_iso_8601_and_epoch_milliseconds(api, make_run):
    old = make_run(
        status=Status.SUCCEEDED,
        created_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
        started_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
        finished_at=datetime(2026, 1, 1, 13, tzinfo=UTC),
    )
    new = make_run(
        status=Status.SUCCEEDED,
        created_at=datetime(2026, 2, 1, 12, tzinfo=UTC),
        started_at=datetime(2026, 2, 1, 12, tzinfo=UTC),
        finished_at=datetime(2026, 2, 1, 13, tzinfo=UTC),
    )
    cut = datetime(2026, 1, 15, tzinfo=UTC)
    millis = int(cut.timestamp() * 1000)
    assert ids(api.get(BASE, {"created_after": cut.isoformat()})) == [str(new.pk)]
    assert ids(api.get(BASE, {"created_before": str(millis)})) == [str(old.pk)]
    assert ids(api.get(BASE, {"started_after": "2026-01-15"})) == [str(new.pk)]
    assert ids(api.get(BASE, {"started_before": "2026-01-15T00:00:00Z"})) == [
        str(old.pk)
    ]
    assert ids(api.get(BASE, {"finished_after": str(millis)})) == [str(new.pk)]
    assert ids(api.get(BASE, {"finished_before": str(millis)})) == [str(old.pk)]


def test_period_filter(api, make_run):
    now = timezone.now()
    recent = make_run(created_at=now - timedelta(minutes=5))
    make_run(created_at=now - timedelta(hours=3))
    assert ids(api.get(f"{BASE}?period=10m")) == [str(recent.pk)]
    assert len(ids(api.get(f"{BASE}?period=2h 59m 59s"))) == 1
    assert len(ids(api.get(f"{BASE}?period=4h"))) == 2


def test_q_searches_id_job_name_subject_and_message(api, make_run):
    a = make_run("imports.nightly", subject="shop.Order:9", message="reading row 7")
    b = make_run("exports.daily")
    assert ids(api.get(f"{BASE}?q=NIGHTLY")) == [str(a.pk)]
    assert ids(api.get(f"{BASE}?q=Order:9")) == [str(a.pk)]
    assert ids(api.get(f"{BASE}?q=row 7")) == [str(a.pk)]
    assert ids(api.get(f"{BASE}?q={b.pk}")) == [str(b.pk)]


def test_params_filter_is_json_containment(api, make_run):
    a = make_run(params={"user_id": 7, "mode": "full", "opts": {"dry": True, "n": 2}})
    b = make_run(params={"user_id": 8, "mode": "full"})
    make_run(params={})
    assert ids(api.get(BASE, {"params": '{"user_id": 7}'})) == [str(a.pk)]
    assert set(ids(api.get(BASE, {"params": '{"mode": "full"}'}))) == {
        str(a.pk),
        str(b.pk),
    }
    assert ids(api.get(BASE, {"params": '{"opts": {"dry": true}}'})) == [str(a.pk)]
    assert ids(api.get(BASE, {"params": '{"user_id": 7, "mode": "quick"}'})) == []
    assert ids(api.get(BASE, {"params": '{"user_id": "7"}'})) == []
    assert len(ids(api.get(BASE, {"params": "{}"}))) == 3


@pytest.mark.parametrize(
    "params",
    [
        {"-1": "minus one"},
        {"0": "zero"},
        {"7": 7},
        {'a"b': 1},
        {"outer": {"-2": True}},
    ],
    ids=["minus-one", "zero", "seven", "quote", "nested-minus-two"],
)
def test_params_filter_finds_keys_a_json_path_cannot_say(api, make_run, params):
    """On SQLite, a key of digits read as an array index (``{"-1": …}`` was a 500) and a
    key holding a quote was not found; PostgreSQL's ``@>`` finds them all."""
    api.raise_request_exception = False  # a server error is a 500, as a browser sees it
    wanted = make_run("keys.job", params=params)
    make_run("keys.job", params={"other": 1})
    response = api.get(BASE, {"params": json.dumps(params)})
    assert response.status_code == 200, (response.status_code, response.content[:200])
    assert [row["id"] for row in response.json()["results"]] == [str(wanted.pk)]


def test_params_filter_tells_integers_past_64_bits_apart(api, make_run):
    """SQLite reads both as the same double, so the filter (and the bulk kill, retry and
    delete it scopes) picked a run with another number; PostgreSQL's ``@>`` does not."""
    mine = make_run("big.job", params={"account": 2**64 + 1})
    other = make_run("big.job", params={"account": 2**64})
    assert ids(api.get(BASE, {"params": json.dumps({"account": 2**64 + 1})})) == [
        str(mine.pk)
    ]
    response = api.post(f"{BASE}kill/?params=" + json.dumps({"account": 2**64 + 1}))
    assert response.status_code in (200, 202), response.content[:300]
    mine.refresh_from_db()
    other.refresh_from_db()
    assert mine.kill_requested_at is not None
    assert other.kill_requested_at is None, "the kill reached a run it was not aimed at"


@pytest.mark.parametrize(
    ("stored", "wanted"),
    [
        ({"rows": [{"a": 1, "b": 2}]}, {"rows": [{"b": 2, "a": 1}]}),
        ({"l": [1]}, {"l": [1.0]}),
    ],
    ids=["keys-in-another-order", "number-as-real"],
)
def test_params_filter_finds_an_equal_list(api, make_run, stored, wanted):
    """SQLite compared lists as text; these are equal JSON, and PostgreSQL finds them."""
    mine = make_run("list.job", params=stored)
    assert ids(api.get(BASE, {"params": json.dumps(wanted)})) == [str(mine.pk)]


def test_params_filter_s_list_holds_its_items_as_on_postgresql(api, make_run):
    """``@>`` finds a list holding every wanted item, in any order and however often,
    objects and lists contained in an item: SQLite does the same."""
    a = make_run(params={"tags": ["x", "y", "z"], "rows": [{"a": 1, "b": [2, 3]}, 4]})
    make_run(params={"tags": "x", "rows": {"a": 1}})
    for wanted in (
        {"tags": ["z", "x", "x"]},
        {"tags": []},
        {"rows": [4, {"b": [3]}]},
        {"rows": [{}]},
    ):
        assert ids(api.get(BASE, {"params": json.dumps(wanted)})) == [str(a.pk)]
    for wanted in ({"tags": ["w"]}, {"rows": [[4]]}, {"rows": [{"b": 2}]}):
        assert ids(api.get(BASE, {"params": json.dumps(wanted)})) == []


def test_params_filter_s_empty_object_is_any_object_as_on_postgresql(api, make_run):
    a = make_run(params={"opts": {"dry": True}})
    make_run(params={"opts": [1]})
    assert ids(api.get(BASE, {"params": '{"opts": {}}'})) == [str(a.pk)]


def test_migration_0002_adds_gin_indexes_on_postgresql_only():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(
            cursor, JobRun._meta.db_table
        )
    gin = {
        name: info for name, info in constraints.items() if info.get("type") == "gin"
    }
    if connection.vendor == "postgresql":
        assert gin["jobstatus_run_params_gin"]["columns"] == ["params"]
        assert "jobstatus_run_search_trgm" in gin
    else:
        assert gin == {}


def test_the_browsable_api_shows_drfs_page_links(api, make_run):
    """The pagination is DRF's CursorPagination: its page controls come with it."""
    runs = [make_run() for _ in range(3)]
    response = api.get(f"{BASE}?page_size=1", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="pager"' in html
    next_url = api.get(f"{BASE}?page_size=1").json()["next"]
    assert next_url.replace("&", "&amp;") in html
    assert str(runs[-1].pk) in html


def test_ordering_by_job_name_pages_through_more_ties_than_drfs_offset_cutoff(api):
    """DRF's CursorPagination walks ties with an offset capped at offset_cutoff (1000)."""
    from rest_framework.pagination import CursorPagination

    now = timezone.now()
    # Its fourth page of 400 would start at offset 1200, read as 1000: rows again.
    count = CursorPagination.offset_cutoff + 600
    JobRun.objects.bulk_create(
        JobRun(job_name="same", created_at=now, queued_at=now) for _ in range(count)
    )
    seen, url = [], f"{BASE}?ordering=job_name&page_size=400"
    for _ in range(10):
        body = api.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
        if url is None:
            break
    assert len(seen) == len(set(seen)) == count


@override_settings(TIME_ZONE="Europe/Berlin")
def test_hour_buckets_keep_the_two_hours_of_a_dst_fall_back_apart(api, make_run):
    """On 2024-10-27 Berlin's clocks go from 03:00 CEST back to 02:00 CET: local 02:00 to
    03:00 happens twice, two real hours. One run finished in each. ``stats/?bucket=hour``
    answered one bucket, ``02:00+02:00``, with 2 finished runs: the hour was truncated on
    the local wall clock, which reads the same in both."""
    for moment in (
        datetime(2024, 10, 27, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2024, 10, 27, 1, 30, tzinfo=UTC),  # 02:30 CET
    ):
        make_run(
            "j",
            status=Status.SUCCEEDED,
            created_at=moment,
            started_at=moment,
            finished_at=moment,
        )
    response = api.get(
        f"{BASE}stats/", {"bucket": "hour", "created_after": "2024-10-26T00:00:00Z"}
    )
    assert response.status_code == 200
    assert [(b["start"], b["finished"]) for b in response.json()["buckets"]] == [
        ("2024-10-27T02:00:00+02:00", 1),
        ("2024-10-27T02:00:00+01:00", 1),
    ]
