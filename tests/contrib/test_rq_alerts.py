"""A monitored job run by a real rqworker: the work horse sends the alert of its check before it exits.

The work horse records the success of a job that wrote its progress, and a finished run of
a monitored job is judged in the background. The horse ends with ``os._exit()`` (no
atexit), so that check and its alert must be done before.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from subprocess import Popen
from typing import Any

import django_rq
import pytest

from django_jobstatus import health
from django_jobstatus.models import JobMonitorIncident, MonitorState, Status
from tests.contrib import rq_jobs
from tests.contrib.dbproxy import Proxy
from tests.contrib.test_rq import finished, recorded, settle
from tests.contrib.workers import db_proxy
from tests.contrib.workers import rq_worker as started_rq_worker
from tests.health.test_alerts import _Hook
from tests.waiting import wait_for

__all__ = ["db_proxy"]  # a fixture

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(scope="module")
def hook() -> Iterator[_Hook]:
    server = _Hook()
    yield server
    server.close()


@pytest.fixture(scope="module")
def rq_worker(
    db_proxy: Proxy, tmp_path_factory: pytest.TempPathFactory, hook: _Hook
) -> Iterator[Popen[bytes]]:
    log = tmp_path_factory.mktemp("rq-alerts") / "worker.log"
    with started_rq_worker(
        db_proxy,
        log,
        queue=rq_jobs.QUEUE,
        prefix="jobstatus-alerts",
        env={"JOBSTATUS_WORKER_ALERT_WEBHOOK": hook.url},
    ) as process:
        yield process


@pytest.mark.usefixtures("rq_on")
def test_the_work_horse_sends_the_alert_of_the_check_its_success_started(
    rq_worker: Popen[bytes],
    hook: _Hook,
    monitor: Any,
    past_run: Any,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    name = "tests.contrib.rq_jobs.report_written"
    # The job failed last: its monitor opens an incident, announced to the hook.
    settings.JOBSTATUS = {"ALERT_WEBHOOKS": [hook.url]}
    monitor(name, max_failures=1)
    past_run(name, ago=timedelta(minutes=2), status=Status.FAILED, error="ValueError")
    with django_capture_on_commit_callbacks(execute=True):
        health.check()
    assert health.outbox.join(10)
    incident = JobMonitorIncident.objects.get()
    assert incident.open_alert_at is not None
    assert [body["event"] for body in hook.bodies] == ["opened"]

    # Its next run succeeds, recorded by the work horse (the job wrote its progress).
    queue = django_rq.get_queue(rq_jobs.QUEUE)
    run = finished(recorded(queue.enqueue(rq_jobs.report_written, 3)), rq_worker)
    assert run.status == Status.SUCCEEDED

    def announced() -> bool:
        # The alert is stamped sent after the hook answered: wait for the stamp.
        incident.refresh_from_db()
        return incident.resolve_alert_at is not None and len(hook.bodies) == 2

    wait_for(
        announced,
        timeout=30,
        what="the horse's check to resolve the incident and send its alert",
        process=rq_worker,
        log=rq_worker.log,  # type: ignore[attr-defined]
    )
    assert incident.resolved_at is not None
    assert [(body["event"], body["job_name"]) for body in hook.bodies] == [
        ("opened", name),
        ("resolved", name),
    ]
    assert incident.monitor.state == MonitorState.HEALTHY
    settle(rq_worker)
