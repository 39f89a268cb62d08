"""Where b3lb finds the files it ships beside its code: SQL migrations, named queries, example config.

A wheel carries them inside the package as `b3lb/_data/sql` and `b3lb/_data/conf` (setup.py copies
the checkout's top-level `sql/` and `conf/` there at build time). A source checkout, and so an
editable install, has no `_data` and reads the checkout's own `sql/` and `conf/`, so edits take
effect at once. Everything that needs these files asks this module.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_DATA = PACKAGE_DIR / "_data"
CHECKOUT_DIR = PACKAGE_DIR.parent


class MissingFiles(Exception):
    """The installation lacks files b3lb needs; the message says which and where it looked."""


def data_path(name: str) -> Path:
    """`name` (e.g. "sql") from the packaged copy when there is one, else from the source checkout."""
    packaged = PACKAGED_DATA / name
    if packaged.exists():
        return packaged
    # Only a real checkout counts: an installed copy's parent is site-packages, not ours.
    if (CHECKOUT_DIR / "setup.py").is_file() and (CHECKOUT_DIR / name).exists():
        return CHECKOUT_DIR / name
    return packaged


SQL_DIR = data_path("sql")
QUERIES_DIR = SQL_DIR / "queries"
EXAMPLE_CONFIG = data_path("conf") / "b3lb.conf"
MIGRATION_GLOB = "[0-9][0-9][0-9][0-9]_*.sql"


def require_sql_files(directory: Path = SQL_DIR) -> None:
    """Raise MissingFiles unless `directory` holds migrations and named queries.

    Without this check an incomplete install starts with no migrations and no queries and only
    fails later, on the first request or admin command that needs one.
    """
    missing = []
    if not any(directory.glob(MIGRATION_GLOB)):
        missing.append("migrations (NNNN_*.sql)")
    if not any((directory / "queries").glob("*.sql")):
        missing.append("queries (queries/*.sql)")
    if missing:
        raise MissingFiles(
            f"incomplete installation: no SQL {' and no '.join(missing)} in {directory}; "
            "reinstall b3lb from its wheel or source tree"
        )


def example_config() -> str:
    """The commented default configuration shipped with b3lb (conf/b3lb.conf)."""
    try:
        return EXAMPLE_CONFIG.read_text(encoding="utf-8")
    except OSError as exc:
        raise MissingFiles(f"incomplete installation: cannot read {EXAMPLE_CONFIG}: {exc.strerror}") from None
