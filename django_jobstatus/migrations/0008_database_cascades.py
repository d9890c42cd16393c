"""PostgreSQL: the database itself deletes a run's log lines and detaches its children.

``JobLog.run`` becomes ``ON DELETE CASCADE`` and ``JobRun.parent`` ``ON DELETE SET NULL``
in the database, what Django's ``CASCADE`` and ``SET_NULL`` already do in Python. A purge
batch is then one ``DELETE`` of runs: PostgreSQL removes their lines in the same statement,
instead of checking at commit, run by run, that no line is left (the check cost as much
as the delete) and of a second statement to detach the children.

Only the constraints change, not the models' state, so ``makemigrations`` stays clean on
Django 5.2 and 6.1 alike, and SQLite and other databases keep Django's emulation. Each
constraint is dropped and added again under its own name, ``NOT VALID`` (no scan while
the table is locked), then validated in its own transaction, which lets writes go on.
If a later migration recreated a constraint without its action, ``purge()`` notices and
deletes the lines itself, as before.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

# (model, column, action) -> the foreign key of that column, with that ON DELETE action.
FOREIGN_KEYS = (("JobLog", "run_id", "CASCADE"), ("JobRun", "parent_id", "SET NULL"))


def _constraint(schema_editor: Any, table: str, column: str) -> str | None:
    """The name of ``table``'s foreign key on ``column`` (Django names it with a hash)."""
    with schema_editor.connection.cursor() as cursor:
        constraints = schema_editor.connection.introspection.get_constraints(
            cursor, table
        )
    for name, details in constraints.items():
        if details["foreign_key"] and details["columns"] == [column]:
            return str(name)
    return None


def _set_actions(apps: Any, schema_editor: Any, *, forwards: bool) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for model_name, column, action in FOREIGN_KEYS:
        model = apps.get_model("django_jobstatus", model_name)
        table = model._meta.db_table
        name = _constraint(schema_editor, table, column)
        if name is None:  # pragma: no cover (a schema changed by hand)
            continue
        target = apps.get_model("django_jobstatus", "JobRun")._meta.db_table
        on_delete = f" ON DELETE {action}" if forwards else ""
        schema_editor.execute(
            f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)},"
            f" ADD CONSTRAINT {quote(name)} FOREIGN KEY ({quote(column)})"
            f" REFERENCES {quote(target)} (id){on_delete}"
            " DEFERRABLE INITIALLY DEFERRED NOT VALID"
        )
        schema_editor.execute(
            f"ALTER TABLE {quote(table)} VALIDATE CONSTRAINT {quote(name)}"
        )


def forwards(apps: Any, schema_editor: Any) -> None:
    _set_actions(apps, schema_editor, forwards=True)


def backwards(apps: Any, schema_editor: Any) -> None:
    _set_actions(apps, schema_editor, forwards=False)


class Migration(migrations.Migration):
    atomic = False  # VALIDATE CONSTRAINT in its own transaction: writers are not blocked

    dependencies = [
        ("django_jobstatus", "0007_jobrun_error_fingerprint"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
