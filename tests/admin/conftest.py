"""Users with chosen permissions, for the admin tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def staff_client(db: None, client: Any) -> Any:
    """``staff_client(*codenames)``: a client logged in as a staff user with only those permissions."""
    from django.contrib.auth.models import Permission, User

    counter = iter(range(1000))

    def make(*codenames: str) -> Any:
        user = User.objects.create_user(f"staff{next(counter)}", is_staff=True)
        if codenames:
            user.user_permissions.set(
                Permission.objects.filter(
                    content_type__app_label="django_jobstatus", codename__in=codenames
                )
            )
        client.force_login(user)
        return client

    return make
