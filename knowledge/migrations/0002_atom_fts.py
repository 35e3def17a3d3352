"""Full-text search over atoms on SQLite: an FTS5 index kept in step by triggers (knowledge/fts.py).
On PostgreSQL the search uses its own full-text search and this migration does nothing."""

from django.db import migrations


def create(apps, schema_editor):
    from knowledge.fts import fts_ensure

    fts_ensure(schema_editor.connection)


def drop(apps, schema_editor):
    from knowledge.fts import fts_drop

    fts_drop(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(create, drop),
    ]
