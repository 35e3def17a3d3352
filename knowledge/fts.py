"""The SQLite full-text index over atoms (FTS5), kept in step by triggers.

Triggers keep the index right for every writer (services, the admin, bulk_create, raw SQL). A
later migration that rebuilds `knowledge_knowledgeatom` (SQLite alters tables by copying them)
drops the triggers with the old table, so `fts_ensure` runs after every `migrate` too
(KnowledgeConfig.ready): it recreates whatever is missing and then re-indexes every atom.
On PostgreSQL search uses its own full-text search (knowledge.services) and this does nothing.
"""

from django.db.backends.base.base import BaseDatabaseWrapper

TABLE = "knowledge_atom_fts"
TRIGGERS = {
    "knowledge_atom_fts_ai": """CREATE TRIGGER knowledge_atom_fts_ai AFTER INSERT ON knowledge_knowledgeatom BEGIN
        INSERT INTO knowledge_atom_fts(rowid, context, claim, action)
        VALUES (new.id, new.context, new.claim, new.action);
    END""",
    "knowledge_atom_fts_ad": """CREATE TRIGGER knowledge_atom_fts_ad AFTER DELETE ON knowledge_knowledgeatom BEGIN
        INSERT INTO knowledge_atom_fts(knowledge_atom_fts, rowid, context, claim, action)
        VALUES ('delete', old.id, old.context, old.claim, old.action);
    END""",
    "knowledge_atom_fts_au": """CREATE TRIGGER knowledge_atom_fts_au AFTER UPDATE OF context, claim, action
        ON knowledge_knowledgeatom BEGIN
        INSERT INTO knowledge_atom_fts(knowledge_atom_fts, rowid, context, claim, action)
        VALUES ('delete', old.id, old.context, old.claim, old.action);
        INSERT INTO knowledge_atom_fts(rowid, context, claim, action)
        VALUES (new.id, new.context, new.claim, new.action);
    END""",
}
CREATE_TABLE = f"""CREATE VIRTUAL TABLE {TABLE} USING fts5(
    context, claim, action,
    content='knowledge_knowledgeatom', content_rowid='id', tokenize='porter unicode61'
)"""


def fts_ensure(connection: BaseDatabaseWrapper) -> bool:
    """Create the index and its triggers where missing, then re-index; return True if anything
    was missing. No-op (False) on other databases or before the atoms table exists."""
    if connection.vendor != "sqlite":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')")
        present = {name for _, name in cursor.fetchall()}
        if "knowledge_knowledgeatom" not in present:
            return False
        missing = [name for name in (TABLE, *TRIGGERS) if name not in present]
        if not missing:
            return False
        if TABLE in missing:
            cursor.execute(CREATE_TABLE)
        for name, sql in TRIGGERS.items():
            if name in missing:
                cursor.execute(sql)
        cursor.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")
    return True


def fts_drop(connection: BaseDatabaseWrapper) -> None:
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        for name in TRIGGERS:
            cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
