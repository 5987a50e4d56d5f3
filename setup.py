"""The C modules of the fast paths, built with the package (pyproject.toml has the rest).

All are optional: where no C compiler or SQLite headers are found the build goes on
without them and the fast paths fall back to ADBC or pyarrow (docs/benchmarks.md says
what that costs).
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
            depends=["src/native/cells.h"],
            libraries=["sqlite3"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        # Arrow columns -> PostgreSQL's CSV COPY text (an import's staged rows,
        # execution/imports/columnar.py)
        Extension(
            "exportd.fastpaths._arrowcsv",
            ["src/native/arrowcsv.c"],
            depends=["src/native/cells.h"],
            extra_compile_args=["-O2", "-std=c99", "-Wall"],
            optional=True,
        ),
        # an import's CSV chunk checked and written as COPY text in one pass
        # (execution/imports/native.py)
        Extension(
            "exportd.fastpaths._importcsv",
            ["src/native/importcsv.c"],
            depends=["src/native/cells.h"],
            extra_compile_args=["-O2", "-std=c99", "-Wall"],
            optional=True,
        ),
        # a chunk of JSON Lines documents -> its flattened paths and CSV cells (the header
        # pass of a documents export, fastpaths/jsonl_csv.py); yyjson (MIT) is vendored
        Extension(
            "exportd.fastpaths._jsoncells",
            ["src/native/jsoncells.c", "src/native/yyjson/yyjson.c"],
            depends=["src/native/cells.h", "src/native/yyjson/yyjson.h"],
            extra_compile_args=["-O2", "-std=c99", "-Wall"],
            optional=True,
        ),
    ],
)
