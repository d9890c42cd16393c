"""Clients and users for the API tests."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("rest_framework")

BASE = "/api/jobstatus/runs/"


@pytest.fixture
def make_user(db: None, django_user_model: Any) -> Any:
    """A user with the given jobrun permissions (``"view"``, ``"change"``, ``"delete"``)."""
    from django.contrib.auth.models import Permission

    counter = iter(range(1, 1000))

    def make(*perms: str, staff: bool = True, superuser: bool = False) -> Any:
        user = django_user_model.objects.create_user(
            username=f"user{next(counter)}",
            is_staff=staff,
            is_superuser=superuser,
        )
        for perm in perms:
            user.user_permissions.add(
                Permission.objects.get(
                    content_type__app_label="django_jobstatus",
                    codename=f"{perm}_jobrun",
                )
            )
        return user

    return make


@pytest.fixture
def client_for() -> Any:
    """An APIClient signed in as ``user`` (anonymous when None)."""
    from rest_framework.test import APIClient

    def make(user: Any = None) -> Any:
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def api(make_user: Any, client_for: Any) -> Any:
    """A client for a staff user with every jobrun permission."""
    return client_for(make_user("view", "change", "delete"))


@pytest.fixture
def away_celery() -> Any:
    """The Celery integration on, with a real broker URL nobody listens on (publishing fails)."""
    celery = pytest.importorskip("celery")
    from django_jobstatus.contrib import celery as jobstatus_celery

    away = celery.Celery("tests.away", broker="redis://127.0.0.1:1/0")
    away.conf.update(
        broker_connection_timeout=1,
        broker_connection_retry=False,
        task_publish_retry=False,
    )
    jobstatus_celery.connect(away)
    yield away
    jobstatus_celery.disconnect()
