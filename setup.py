from setuptools import find_packages, setup

setup(
    name="b3lb",
    version="0.1.0",
    description="A fast BigBlueButton API load balancer (Tornado, asyncpg, PostgreSQL)",
    python_requires=">=3.11",
    packages=find_packages(include=["b3lb", "b3lb.*"]),
    install_requires=[
        "tornado>=6.4",
        "asyncpg>=0.29",
        "redis>=5.0",
        "orjson>=3.9",
        "lxml>=5.0",
        "uvloop>=0.19",
        "prometheus-client>=0.20",
        # Embedded PostgreSQL for machines without a configured database: it ships
        # real PostgreSQL binaries in a wheel, which no hand-written code can replace.
        "pgserver>=0.1.4",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-tornado>=0.8",
            "ruff>=0.5",
        ],
    },
    entry_points={"console_scripts": ["b3lb=b3lb.cli:main"]},
)
