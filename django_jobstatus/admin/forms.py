"""The changelist's action form, the same HTML as Django's, written in Python.

Django renders a form widget through its templates: the action ``<select>`` of a runs'
changelist is one include for the select, one for each option and one for each attribute
list, some 2.5 ms of a 33 ms page. These widgets write the same HTML in Python when the
form renderer is Django's own, whose widget templates a project cannot override; with any
other renderer (``TemplatesSetting``, Jinja2) they render through it as Django does.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin import helpers
from django.forms.renderers import DjangoTemplates, get_default_renderer
from django.utils.safestring import SafeString, mark_safe

from django_jobstatus.admin.display import escaped


def _attrs(attrs: dict[str, Any]) -> str:
    """``django/forms/widgets/attrs.html``: `` name="value"``, a bare name for True, nothing for False."""
    return "".join(
        f" {escaped(name)}"
        if value is True
        else f' {escaped(name)}="{escaped(str(value))}"'
        for name, value in attrs.items()
        if value is not False
    )


class _Written(forms.Widget):
    """A widget written by ``write()`` from its template context while the renderer is
    Django's own, whose widget templates a project cannot override; through the renderer
    otherwise."""

    def render(
        self,
        name: str,
        value: Any,
        attrs: dict[str, Any] | None = None,
        renderer: Any = None,
    ) -> SafeString:
        if type(renderer or get_default_renderer()) is not DjangoTemplates:
            return super().render(name, value, attrs, renderer)
        widget = self.get_context(name, value, attrs)["widget"]
        return mark_safe(self.write(widget))  # noqa: S308 (write() escapes every value)

    def write(self, widget: dict[str, Any]) -> str:
        raise NotImplementedError


class Select(_Written, forms.Select):
    """``select.html`` and ``select_option.html`` (whose file ends in a line break that each
    option keeps)."""

    def write(self, widget: dict[str, Any]) -> str:
        parts = [f'<select name="{escaped(widget["name"])}"{_attrs(widget["attrs"])}>']
        for group, options, _index in widget["optgroups"]:
            if group:
                parts.append(f'\n  <optgroup label="{escaped(group)}">')
            parts.extend(
                f'\n  <option value="{escaped(str(option["value"]))}"{_attrs(option["attrs"])}>'
                f"{escaped(option['label'])}</option>\n"
                for option in options
            )
            if group:
                parts.append("\n  </optgroup>")
        parts.append("\n</select>")
        return "".join(parts)


class HiddenInput(_Written, forms.HiddenInput):
    """``input.html``."""

    def write(self, widget: dict[str, Any]) -> str:
        value = widget["value"]
        shown = "" if value is None else f' value="{escaped(str(value))}"'
        return (
            f'<input type="{escaped(widget["type"])}" name="{escaped(widget["name"])}"'
            f"{shown}{_attrs(widget['attrs'])}>"
        )


class ActionForm(helpers.ActionForm):
    """Django's action form with the widgets above."""

    action = forms.ChoiceField(
        label=helpers.ActionForm.base_fields["action"].label, widget=Select
    )
    select_across = forms.BooleanField(
        label="",
        required=False,
        initial=0,
        widget=HiddenInput({"class": "select-across"}),
    )
