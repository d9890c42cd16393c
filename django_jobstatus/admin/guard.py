"""What every model admin of the app enforces: one permission rule, and no hostile lookups.

- Seeing anything needs the model's view permission (Django also lets the change permission
  see); acting needs view plus the action's own permission.
- A changelist never filters inside a JSON field (``?params__password__startswith=…`` would
  reveal a REDACT_KEYS value one character at a time, as the API's ``params`` filter refuses
  those keys), nor on text holding NUL (PostgreSQL cannot compare it), nor with a regular
  expression (``?message__regex=(`` failed in the database, a 500; and a costly pattern
  runs over every row): no filter or link of the app uses one.
- An action's selected ids must be ids, or the action does not run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ValidationError
from django.db.models import JSONField
from django.http import HttpResponseRedirect
from django.utils.translation import gettext as _

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from django.http import HttpRequest, HttpResponse


def holds_nul(*values: Any) -> bool:
    """Whether one of ``values`` holds NUL, which PostgreSQL cannot compare with text."""
    return any("\x00" in str(value) for value in values)


class GuardedAdmin:
    """A ModelAdmin mixin (put it first): the permission rule, refused lookups, checked ids."""

    opts: Any

    def _has(self, request: HttpRequest, action: str) -> bool:
        codename = get_permission_codename(action, self.opts)
        return bool(request.user.has_perm(f"{self.opts.app_label}.{codename}"))

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._has(request, "view")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request) and bool(
            super().has_add_permission(request)  # type: ignore[misc]
        )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_view_permission(request, obj) and bool(
            super().has_change_permission(request, obj)  # type: ignore[misc]
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_view_permission(request, obj) and bool(
            super().has_delete_permission(request, obj)  # type: ignore[misc]
        )

    def lookup_allowed(self, lookup: str, value: Any, request: HttpRequest) -> bool:
        field = lookup.split("__", 1)[0]
        json_fields = {
            f.name for f in self.opts.get_fields() if isinstance(f, JSONField)
        }
        values = value if isinstance(value, list | tuple) else [value]
        if (
            field in json_fields
            or holds_nul(*values)
            or lookup.endswith(("__regex", "__iregex"))
        ):
            return False
        return bool(super().lookup_allowed(lookup, value, request))  # type: ignore[misc]

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        bad = []
        for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
            try:
                self.opts.pk.to_python(value)
            except ValidationError:
                bad.append(value)
        if bad:
            self.message_user(  # type: ignore[attr-defined]
                request,
                _("Nothing was done: %(values)s are not ids of %(models)s.")
                % {
                    "values": ", ".join(repr(value) for value in bad),
                    "models": self.opts.verbose_name_plural,
                },
                messages.ERROR,
            )
            return HttpResponseRedirect(request.get_full_path())
        # (Django 6.1 adds an argument: the location of the action bar.)
        return super().response_action(request, queryset, *args, **kwargs)  # type: ignore[misc,no-any-return]
