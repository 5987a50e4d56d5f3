"""The two C readers of the fast paths, built with the package (pyproject.toml has the rest).

Both are optional: where no C compiler or SQLite headers are found the build goes on
without them and the fast paths fall back to ADBC (docs/benchmarks.md says what that costs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # PostgreSQL's COPY drained in C, binary COPY -> Arrow buffers (fastpaths/pg_binary.py);
        # it calls psycopg's own libpq (dlopen/dlsym): no libpq headers or link needed
        Extension(
            "exportd.fastpaths._pgbinary",
            ["src/native/pgbinary.c"],
            libraries=["dl"],
            extra_compile_args=["-O2", "-std=c99", "-Wall"],
            optional=True,
        ),
        # SQLite rows -> CSV bytes (fastpaths/sqlite_csv.py)
        Extension(
            "exportd.fastpaths._sqlitecsv",
            ["src/native/sqlitecsv.c"],
            libraries=["sqlite3"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ],
)
