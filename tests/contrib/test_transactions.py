"""PostgreSQL: what the record says when the caller's transaction is open while the task
system acts (a batch() inside transaction.atomic() or ATOMIC_REQUESTS; a kill in such a
request). Found by a red-team pass."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import rq
from django.db import connection, connections, transaction

from django_jobstatus import own_connections, writebehind
from django_jobstatus.batches import batch
from django_jobstatus.contrib import rq as jobstatus_rq
from django_jobstatus.models import JobRun, Status
from tests.contrib import kill_jobs, rq_jobs
from tests.contrib.celery_app import BROKER_URL, app
from tests.contrib.workers import recorded_by_a_worker

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CHANGELIST = "/admin/django_jobstatus/jobrun/"


@pytest.fixture
def immediate_tasks(settings: Any) -> Iterator[Any]:
    """The Django tasks integration on the ImmediateBackend; the test app's tasks module."""
    from django_jobstatus.contrib import tasks as integration
    from tests.contrib.tasks_app import tasks

    settings.TASKS = {
        "default": {
            "BACKEND": f"{tasks.FRAMEWORK}.backends.immediate.ImmediateBackend",
            "QUEUES": [],
        }
    }
    integration.connect()
    try:
        yield tasks
    finally:
        integration.disconnect()


@pytest.mark.redis
@pytest.mark.usefixtures("celery_on")
def test_a_batch_inside_atomic_keeps_the_celery_tasks_it_enqueued() -> None:
    """``with transaction.atomic(): with batch("import"): task.delay(...)`` (or the same
    batch in a view under ATOMIC_REQUESTS) on PostgreSQL: the batch's parent ends at once
    ``succeeded`` with 0 children, and the tasks' queued runs are never written (an
    IntegrityError is logged by the write-behind writer). The user sees a batch that
    "succeeded" having done nothing, while its tasks run unattached, and their failures
    never fail it.

    The parent is INSERTed on the caller's connection, in its open transaction, while the
    integration writes each child's queued run through another connection (the
    write-behind writer, or the side connection), which cannot see the uncommitted parent:
    the child's parent_id violates the foreign key."""
    queue = f"rt-tx-{uuid.uuid4().hex[:8]}"
    try:
        with transaction.atomic(), batch("rt.import") as parent:
            first = app.send_task("tests.add", args=[1, 2], queue=queue)
            second = app.send_task("tests.add", args=[3, 4], queue=queue)
        writebehind.flush()
    finally:
        redis.Redis.from_url(BROKER_URL).delete(queue)
    parent.refresh_from_db()
    children = JobRun.objects.filter(backend_job_id__in=[first.id, second.id])
    assert sorted(children.values_list("parent_id", flat=True)) == [parent.pk] * 2
    assert parent.status == Status.QUEUED
    assert parent.progress_total == 2


@pytest.mark.redis
@pytest.mark.usefixtures("rq_on")
def test_an_rq_job_enqueued_in_a_batch_inside_atomic_is_its_child() -> None:
    """As with Celery: RQ's ``Queue.enqueue_many()`` (pushed at once, not deferred to the
    commit) inside ``batch()`` inside ``transaction.atomic()`` leaves the parent
    ``succeeded`` with no children, and the jobs' queued runs are never written (the
    foreign key to the uncommitted parent fails on the writer's connection)."""
    queue = jobstatus_rq.Queue(
        f"rt-tx-{uuid.uuid4().hex[:8]}",
        connection=redis.Redis.from_url(rq_jobs.REDIS_URL),
    )
    try:
        with transaction.atomic(), batch("rt.rq-import") as parent:
            jobs = queue.enqueue_many(
                [
                    rq.Queue.prepare_data(kill_jobs.mark, args=(f"rt:{i}",))
                    for i in range(2)
                ]
            )
        writebehind.flush()
        parent.refresh_from_db()
        children = JobRun.objects.filter(backend_job_id__in=[job.id for job in jobs])
        assert sorted(children.values_list("parent_id", flat=True)) == [parent.pk] * 2
        assert parent.status == Status.QUEUED
    finally:
        queue.empty()


@pytest.mark.redis
@pytest.mark.usefixtures("rq_on")
@pytest.mark.django_db(transaction=True, databases=["default", "default__jobstatus"])
def test_a_kill_of_a_queued_rq_job_under_atomic_requests_ends_its_run_killed(
    admin_client: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """The admin's *Request kill* of a queued RQ job with ATOMIC_REQUESTS = True: RQ cancels
    the job (it will never run), but the request hung about 20 s and the run stayed
    ``queued`` (kill requested) for ever, where the docs say "canceled: the run ends
    `killed` at once". Nothing will move it again but the queued-timeout reaper, if set.

    request_kill() writes kill_requested_at in the request's transaction (row locked until
    the response); RQBackend.kill() then records the cancel through best_effort(), whose
    tracking_database() is the side connection inside an atomic block: its UPDATE waits
    for the request's row lock, hits lock_timeout (10 s) twice, and is logged and dropped."""
    name = f"rt-tx-{uuid.uuid4().hex[:8]}"
    settings.RQ_QUEUES = {**rq_jobs.RQ_QUEUES, name: {"URL": rq_jobs.REDIS_URL}}
    queue = jobstatus_rq.Queue(name, connection=redis.Redis.from_url(rq_jobs.REDIS_URL))
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    # The side connection as production makes it (tests/settings.py declares the alias,
    # as docs/testing.md says to, with no lock_timeout: there the request waits for ever).
    side = connections["default__jobstatus"]
    side.close()
    monkeypatch.setattr(side, "settings_dict", own_connections.side_settings("default"))
    try:
        job = rq.Queue.enqueue_call(queue, kill_jobs.mark, args=("rt:never",))
        writebehind.flush()
        run = jobstatus_rq.find_run(job.id)
        assert run is not None and run.status == Status.QUEUED
        response = admin_client.post(
            CHANGELIST,
            {"action": "request_kill", "_selected_action": [str(run.pk)]},
            follow=True,
        )
        assert response.status_code == 200
        assert job.get_status(refresh=True) == rq.job.JobStatus.CANCELED
        run.refresh_from_db()
        assert run.status == Status.KILLED
    finally:
        queue.empty()


@pytest.mark.django_db(transaction=True, databases=["default", "default__jobstatus"])
def test_an_immediate_task_run_in_a_batch_inside_atomic_is_recorded(
    immediate_tasks: Any,
) -> None:
    """Django tasks' ImmediateBackend inside ``batch()`` inside ``transaction.atomic()``
    on PostgreSQL: the task runs, but no run of it is recorded at all (start and end both
    fail on the foreign key, logged as "Could not record the end of task"), and the
    parent ends ``succeeded`` with no children. A task that ran leaves no trace.

    The start is written through the side connection (tracking_database()) with
    ``parent`` = the batch's parent, which exists only in the caller's open transaction."""
    with transaction.atomic(), batch("rt.immediate") as parent:
        result = immediate_tasks.add.enqueue(1, 2)
    assert str(result.status) == "SUCCESSFUL"  # the task ran
    runs = JobRun.objects.filter(source="django_tasks", backend_job_id=str(result.id))
    assert list(runs.values_list("status", "parent_id")) == [
        (Status.SUCCEEDED, parent.pk)
    ]


@pytest.mark.redis
@pytest.mark.usefixtures("rq_on")
def test_a_job_django_rq_enqueues_at_the_commit_is_a_child_of_its_batch(
    settings: Any,
) -> None:
    """django-rq's default COMMIT_MODE ("on_db_commit") defers ``queue.enqueue()`` made
    inside a transaction to its commit. A view under ATOMIC_REQUESTS (or any
    ``transaction.atomic()``) doing the docs' ``with batch("imports.all"):
    import_file.delay(...)`` gets a parent that ends ``succeeded`` with no children at
    the block's end, and jobs pushed at the commit that are recorded as runs of no batch:
    the batch says all went well whatever its jobs do.

    ``batch()`` hands its parent to the integrations through a ContextVar read when the
    run is recorded (``batches.current_parent()``); the deferred enqueue records it after
    the block has reset it, and the block's end counted no child."""
    name = f"rt-tx-{uuid.uuid4().hex[:8]}"
    settings.RQ_QUEUES = {**rq_jobs.RQ_QUEUES, name: {"URL": rq_jobs.REDIS_URL}}
    import django_rq

    queue = django_rq.get_queue(name)
    assert isinstance(queue, jobstatus_rq.Queue)
    try:
        with transaction.atomic():
            with batch("rt.deferred") as parent:
                queue.enqueue(kill_jobs.mark, "rt:deferred")
            parent.refresh_from_db()
            status_at_block_end = parent.status
        writebehind.flush()
        job_ids = queue.get_job_ids()
        assert len(job_ids) == 1  # pushed at the commit
        runs = JobRun.objects.filter(source="rq", backend_job_id__in=job_ids)
        assert (
            status_at_block_end,
            list(runs.values_list("parent_id", flat=True)),
        ) == (
            Status.QUEUED,
            [parent.pk],
        )
    finally:
        queue.empty()


@pytest.mark.redis
@pytest.mark.usefixtures("celery_on")
def test_celery_tasks_sent_at_the_commit_of_a_batch_are_its_children(
    django_user_model: Any,
) -> None:
    """Celery's own answer to "enqueue inside a transaction", ``delay_on_commit()`` /
    ``apply_async_on_commit()`` (DjangoTask), and Django's documented
    ``transaction.on_commit(lambda: task.delay())``, inside ``batch()`` in a view under
    ATOMIC_REQUESTS: the parent ended ``succeeded`` with 0 children at the commit, and the
    tasks, published at that same commit after the block had ended, were runs of no
    batch. Only django-rq's deferred push carried the parent over."""
    from tests.contrib.celery_app import add

    alice = django_user_model.objects.create_user("alice")
    queue = f"rt-tx-{uuid.uuid4().hex[:8]}"
    try:
        with transaction.atomic(), batch("rt.on-commit", owner=alice) as parent:
            add.apply_async_on_commit(args=(1, 2), queue=queue)
            transaction.on_commit(lambda: add.apply_async(args=(3, 4), queue=queue))
        writebehind.flush()
        published = redis.Redis.from_url(BROKER_URL).llen(queue)
    finally:
        redis.Redis.from_url(BROKER_URL).delete(queue)
    parent.refresh_from_db()
    runs = JobRun.objects.filter(source="celery", queue=queue)
    assert published == 2
    assert list(runs.values_list("parent_id", flat=True)) == [parent.pk] * 2
    assert list(runs.values_list("owner", flat=True)) == [alice.pk] * 2  # hers too
    assert (parent.status, parent.progress_total) == (Status.QUEUED, 2)


@pytest.mark.redis
@pytest.mark.usefixtures("celery_on")
def test_a_task_sent_in_a_savepoint_rolled_back_is_still_a_child_of_its_batch() -> None:
    """A batch in a view under ATOMIC_REQUESTS that handles each item in a savepoint and
    skips a failed one: a task sent before the savepoint rolled back is published all the
    same (the broker is not transactional), runs, and its run is recorded, but it was no
    child of the batch, which counted 1 of its 2 tasks. Its adoption was an on_commit
    callback registered inside the savepoint, and Django drops those."""
    queue = f"rt-tx-{uuid.uuid4().hex[:8]}"
    try:
        with transaction.atomic(), batch("rt.savepoint") as parent:
            first = app.send_task("tests.add", args=[1, 2], queue=queue)
            try:
                with transaction.atomic():
                    second = app.send_task("tests.add", args=[3, 4], queue=queue)
                    raise ValueError("item 2 is bad")
            except ValueError:
                pass
        writebehind.flush()
        published = redis.Redis.from_url(BROKER_URL).llen(queue)
    finally:
        redis.Redis.from_url(BROKER_URL).delete(queue)
    parent.refresh_from_db()
    runs = JobRun.objects.filter(backend_job_id__in=[first.id, second.id])
    assert published == 2
    assert list(runs.values_list("parent_id", flat=True)) == [parent.pk] * 2
    assert parent.progress_total == 2


@pytest.mark.django_db(transaction=True, databases=["default", "default__jobstatus"])
def test_a_batch_whose_block_raised_inside_atomic_counts_its_children(
    immediate_tasks: Any,
) -> None:
    """A ``batch()`` inside ``transaction.atomic()`` whose block raised after running an
    immediate task, the error caught and the transaction committed: the parent ended
    failed 0 of 0 with ``{"children": {}}`` at the raise, before its child (which ran and
    succeeded) was adopted at the commit, and nothing refreshed it again."""
    with (
        transaction.atomic(),
        contextlib.suppress(ValueError),
        batch("rt.caught") as parent,
    ):
        result = immediate_tasks.add.enqueue(1, 2)
        raise ValueError("the import's last step failed")
    parent.refresh_from_db()
    child = JobRun.objects.get(source="django_tasks", backend_job_id=str(result.id))
    assert (child.status, child.parent_id) == (Status.SUCCEEDED, parent.pk)
    assert (parent.status, parent.error) == (
        Status.FAILED,
        "ValueError: the import's last step failed",
    )
    assert (parent.progress_current, parent.progress_total, parent.result) == (
        1,
        1,
        {"children": {Status.SUCCEEDED: 1}},
    )


@pytest.mark.redis
@pytest.mark.usefixtures("celery_on")
@pytest.mark.parametrize("in_transaction", [True, False])
def test_a_child_a_worker_recorded_before_the_writer_is_adopted(
    monkeypatch: pytest.MonkeyPatch, django_user_model: Any, in_transaction: bool
) -> None:
    """A batch inside ``transaction.atomic()`` whose task an idle worker took before the
    write-behind writer wrote its queued run: the worker recorded the run, the writer
    merged its queued time into it (writebehind.py), and the commit's adoption, by the id
    of the writer's row, matched nothing: the batch ended ``succeeded`` 0 of 0 while its
    task ran outside it. Outside a transaction the writer's row names the parent, and
    the owner it takes from it, which the merge adds to the worker's run."""
    real = writebehind._insert
    alice = django_user_model.objects.create_user("alice")

    def worker_first(alias: str, rows: list[dict[str, Any]]) -> None:
        recorded_by_a_worker(alias, rows)
        real(alias, rows)

    monkeypatch.setattr(writebehind, "_insert", worker_first)
    queue = f"rt-tx-{uuid.uuid4().hex[:8]}"
    try:
        around = transaction.atomic() if in_transaction else contextlib.nullcontext()
        with around, batch("rt.race", owner=alice) as parent:
            sent = app.send_task("tests.add", args=[1, 2], queue=queue)
            writebehind.flush()  # the writer's turn, after the worker's
    finally:
        redis.Redis.from_url(BROKER_URL).delete(queue)
    parent.refresh_from_db()
    run = JobRun.objects.get(source="celery", backend_job_id=sent.id)
    assert run.queued_at is not None  # the writer's row merged into the worker's
    assert (run.parent_id, parent.status) == (parent.pk, Status.RUNNING)
    assert run.owner_id == alice.pk
