# A team's longest portal key lifetime of 0 was accepted but served as 90 days (the blank value): it
# becomes blank, then the column refuses 0.

import django.core.validators
from django.db import migrations, models


def zero_is_blank(apps, schema_editor):
    apps.get_model("proxy", "Team").objects.filter(key_max_days=0).update(key_max_days=None)


class Migration(migrations.Migration):

    dependencies = [
        ('proxy', '0010_admin_rows_keep_their_key'),
    ]

    operations = [
        migrations.RunPython(zero_is_blank, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='team',
            name='key_max_days',
            field=models.PositiveIntegerField(blank=True, help_text='Keys made in the portal always expire; blank: 90 days.', null=True, validators=[django.core.validators.MinValueValidator(1)], verbose_name='longest key lifetime (days)'),
        ),
        migrations.AddConstraint(
            model_name='team',
            constraint=models.CheckConstraint(condition=models.Q(('key_max_days__isnull', True), ('key_max_days__gte', 1), _connector='OR'), name='team_key_max_days_at_least_1'),
        ),
    ]
