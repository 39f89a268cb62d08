"""A regular (non-editable) install works: the wheel carries sql/ and conf/b3lb.conf.

The checkout is built into a wheel (no downloads: no build isolation, no index) and installed into
a fresh venv outside the checkout. That venv borrows the dependencies of the test's own venv
through a .pth file listing its site-packages; a plain path line does not run the editable
install's finder, so `import b3lb` there can only find the installed copy, which is checked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from db_support import REPO

# Not needed to build the wheel; leaving them out keeps the copy small.
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "var", ".pytest_cache", ".ruff_cache", "tests",
    "benchmarks",
)


@dataclass(frozen=True)
class Installed:
    venv: Path
    package: Path  # site-packages/b3lb of the venv
    source: Path  # the copy of the checkout the wheel was built from
    work: Path  # an empty working directory: no conf/ in sight

    @property
    def b3lb(self) -> Path:
        return self.venv / "bin" / "b3lb"


def _run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False, **kwargs  # type: ignore[arg-type]
    )


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that could point b3lb at the checkout or its config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("B3LB_", "PYTHON")) and k != "REDIS_URL"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("packaging")
    source = base / "src"
    shutil.copytree(REPO, source, ignore=IGNORED)
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", base / "dist", source],
        env=_clean_env(),
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("b3lb-*.whl")
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    borrowed = [path for path in site.getsitepackages() if Path(path).is_dir()]
    assert borrowed and not any(Path(path) == REPO for path in borrowed)
    (site_packages / "borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    added = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        env=_clean_env(),
    )
    assert added.returncode == 0, added.stderr
    work = base / "work"
    work.mkdir()
    yield Installed(venv=venv, package=site_packages / "b3lb", source=source, work=work)


def _tables(url: str) -> set[str]:
    async def fetch() -> set[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            return {row["tablename"] for row in rows}
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_the_venv_imports_the_installed_copy(installed: Installed) -> None:
    probe = _run(
        [installed.venv / "bin" / "python", "-c",
         "import b3lb, b3lb.resources as r; print(b3lb.__file__); print(r.SQL_DIR); print(r.EXAMPLE_CONFIG)"],
        cwd=installed.work,
        env=_clean_env(),
    )
    assert probe.returncode == 0, probe.stderr
    module, sql_dir, config = (Path(line) for line in probe.stdout.split())
    assert module == installed.package / "__init__.py"
    assert not module.is_relative_to(REPO)
    assert sql_dir == installed.package / "_data" / "sql"
    assert config == installed.package / "_data" / "conf" / "b3lb.conf"


def test_installed_b3lb_migrates_a_fresh_schema(installed: Installed, empty_db: str) -> None:
    env = _clean_env(DATABASE_URL=empty_db, B3LB_SERVER_DATA_DIR=str(installed.work / "var"))
    result = _run([installed.b3lb, "migrate"], cwd=installed.work, env=env)
    assert result.returncode == 0, result.stderr
    migrations = sorted(path.name for path in (installed.source / "sql").glob("[0-9]*.sql"))
    assert result.stdout.split() == [word for name in migrations for word in ("applied", name)]
    assert {"cluster", "node", "tenant", "secret", "meeting", "schema_migrations"} <= _tables(empty_db)
    # The named queries are there too: an admin command runs them.
    listed = _run([installed.b3lb, "--json", "cluster", "list"], cwd=installed.work, env=env)
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr


def test_installed_b3lb_prints_its_example_config(installed: Installed) -> None:
    result = _run([installed.b3lb, "config-example"], cwd=installed.work, env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == (installed.source / "conf" / "b3lb.conf").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("hidden", "missing"),
    [("sql", "no SQL migrations (NNNN_*.sql) and no queries"), ("sql/queries", "no SQL queries (queries/*.sql)")],
)
def test_missing_sql_files_stop_start_up(installed: Installed, empty_db: str, hidden: str, missing: str) -> None:
    env = _clean_env(DATABASE_URL=empty_db, B3LB_SERVER_DATA_DIR=str(installed.work / "var"))
    target = installed.package / "_data" / hidden
    aside = target.with_name(target.name + ".aside")
    target.rename(aside)
    try:
        for command in (["migrate"], ["serve"], ["tenant", "list"]):
            result = _run([installed.b3lb, *command], cwd=installed.work, env=env)
            assert result.returncode == 1, (command, result.stdout, result.stderr)
            assert result.stderr.startswith(f"error: incomplete installation: {missing}"), result.stderr
            assert result.stderr.count("\n") == 1 and str(installed.package / "_data" / "sql") in result.stderr
        assert _tables(empty_db) == set()  # nothing ran with half the files
    finally:
        aside.rename(target)
