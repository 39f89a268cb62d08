import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Top-level files the code needs at run time -> their place inside the built package (b3lb/resources.py).
PACKAGE_DATA = {"sql": "b3lb/_data/sql", "conf/b3lb.conf": "b3lb/_data/conf/b3lb.conf"}


class BuildWithData(build_py):
    """build_py that also copies sql/ and conf/b3lb.conf into the built package as b3lb/_data.

    The checkout keeps its layout (sql/ and conf/ at the top); a wheel carries copies. An editable
    install copies nothing, so it keeps reading the checkout's files and edits take effect at once.
    """

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, target in PACKAGE_DATA.items():
            origin, built = HERE / source, Path(self.build_lib) / target
            if not origin.exists():
                raise SystemExit(f"error: {origin} is missing: a wheel without it cannot run")
            if origin.is_dir():
                shutil.rmtree(built, ignore_errors=True)  # no stale files from an earlier build
                shutil.copytree(origin, built, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                built.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, built)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            for target in PACKAGE_DATA.values():
                built = Path(self.build_lib) / target
                files = built.rglob("*") if built.is_dir() else [built]
                outputs.extend(str(path) for path in files if path.is_file())
        return outputs


setup(
    name="b3lb",
    version="0.1.0",
    description="A fast BigBlueButton API load balancer (Tornado, asyncpg, PostgreSQL)",
    python_requires=">=3.11",
    packages=find_packages(include=["b3lb", "b3lb.*"]),
    # The fake node's webcam video when no ffmpeg is at hand (b3lb/testing/fakerecording.py).
    package_data={
        "b3lb.testing": ["fixtures/*.webm"],
        # The operator dashboard's page, script and style (b3lb/admin/page.py serves them from the package).
        "b3lb.admin": ["static/*.html", "static/*.js", "static/*.css", "static/*.svg"],
    },
    install_requires=[
        "tornado>=6.4",
        "asyncpg>=0.29",
        "redis>=5.0",
        "orjson>=3.9",
        "lxml>=5.0",
        "uvloop>=0.19",
        "prometheus-client>=0.20",
        # HTTP client for nodes and tenant callbacks (b3lb/nodeclient.py): C parser, per-host keep-alive pools,
        # timeouts, bounded gzip/deflate inflation. 3.14.4 fixes the zip-bomb and many-member DoS advisories.
        "aiohttp>=3.14.4",
        # Embedded PostgreSQL for machines without a configured database: it ships
        # real PostgreSQL binaries in a wheel, which no hand-written code can replace.
        "pgserver>=0.1.4",
        # Streaming multipart parser for node uploads (b3lb/recordings/upload.py): the archive goes to
        # storage as it arrives, never whole in memory. Starlette's parser, pure Python.
        "python-multipart>=0.0.20",
        # Recording-ready callbacks carry a JWT (HS256) signed with the tenant's secret.
        "PyJWT>=2.8",
        # S3-compatible recording storage (b3lb/recordings/s3store.py): AWS's own SDK, with the public
        # multipart-upload API a streamed 10 GiB archive needs; run in threads (aiobotocore pins botocore
        # to versions that conflict with boto3).
        "boto3>=1.34",
        # ffmpeg for rendering when none is on PATH (b3lb/render/ffmpeg.py): a static build with libx264,
        # libvpx, opus and librsvg in a wheel, so the README's install command is enough on a fresh machine.
        "imageio-ffmpeg>=0.5",
        # Fallback SVG rasteriser for whiteboard drawings when the ffmpeg in use has no librsvg.
        "resvg-py>=0.5",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-tornado>=0.8",
            "ruff>=0.5",
            # TLS certificates from a throw-away CA for the node client's https tests (tests/test_nodeclient.py).
            "trustme>=1.1",
            # tests/test_packaging.py builds a wheel without build isolation; setuptools < 70.1 needs it.
            "wheel>=0.40",
            # A real S3 HTTP server for the storage tests (moto in server mode, no credentials needed).
            "moto[server]>=5.0",
            # Yardstick (b) of benchmarks.run: an ASGI hello-world on uvicorn + httptools, what a user
            # could pick instead of Tornado (issue 12.1).
            "uvicorn>=0.30",
            "httptools>=0.6",
            # Validates the admin API's OpenAPI 3.1 document (tests/test_admin_api_openapi.py): the reference
            # validator of the OpenAPI community, so the served document is checked against the real schema.
            "openapi-spec-validator>=0.7",
            # Drives Debian's headless Chromium (/usr/bin/chromium, installed by the test itself) for the
            # dashboard test (tests/test_admin_page.py); Playwright's own browser downloads are never used.
            "playwright>=1.40",
        ],
    },
    entry_points={"console_scripts": ["b3lb=b3lb.admin.cli:main"]},
    cmdclass={"build_py": BuildWithData},
)
