"""Fixtures the integration tests share: an integration switched on in this (the enqueueing) process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def celery_on() -> Iterator[None]:
    """The Celery integration on, killing and retrying through the tests' app."""
    from django_jobstatus.contrib import celery as jobstatus_celery
    from tests.contrib.celery_app import app

    jobstatus_celery.connect(app)
    yield
    jobstatus_celery.disconnect()


@pytest.fixture
def rq_on(settings: Any) -> Iterator[None]:
    """django-rq configured as in the worker, and the RQ integration on."""
    from django_jobstatus.contrib import rq as jobstatus_rq
    from tests.contrib import rq_jobs

    settings.RQ_QUEUES = rq_jobs.RQ_QUEUES
    settings.RQ = rq_jobs.RQ
    jobstatus_rq.connect()
    yield
    jobstatus_rq.disconnect()
