"""A deleted user's runs lose their owner on the database that holds the runs
(``models.detach_owner``, and ``clear_deleted_owner()`` once the delete is committed):
with the app's tables on a database of their own, Django cleared them on the user's
database, and no user could be deleted. ``on_delete`` is not in the schema: no SQL.
"""

import django_jobstatus.models
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('django_jobstatus', '0024_jobmonitorincident_resolved_to'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='jobrun',
            name='owner',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django_jobstatus.models.detach_owner, related_name='jobstatus_runs', to=settings.AUTH_USER_MODEL, verbose_name='owner'),
        ),
    ]
