"""schemathesis over exportd's own OpenAPI document, against the real app over a socket,
with a project admin's token and with a writer's: no 5xx, every error has `error_code`
and `error_msg`, every response matches its schema, a request the document allows is
accepted (see DATA_DEPENDENT for the two operations where that cannot hold).

Bounded to a few hundred requests: a few examples per operation (valid and invalid).
Path parameters usually point at the test project's real objects, so that the calls get
past 404 into the handlers; the dataset URL is always the test's own SQLite file, so no
generated URL ever makes exportd connect anywhere."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api_support import Project, make_project, small_sqlite_source
from tests.support import PG_ADMIN_URL, LiveServer, drop_database, pg_url

POSITIVE = 10  # examples per operation that fit the schema
NEGATIVE = 6  # and that do not (they must get a 4xx)


class Target:
    """The server under test and the objects the cases are aimed at."""

    def __init__(self, server: LiveServer, project: Project, source: str) -> None:
        self.server, self.project, self.source = server, project, source
        w = project["writer"]
        self.ended_task = w.export("acme", dataset_id="flights")["task_id"]
        w.http.post(f"/v1/projects/acme/exports/{self.ended_task}/cancel")
        self.done_task = w.export("acme", dataset_id="flights", file_name="done.csv")["task_id"]
        assert w.wait("acme", self.done_task)["status"] == "COMPLETED"
        self.tasks = [self.ended_task, self.done_task]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The store on PostgreSQL, the stricter of the two (its text refuses NUL, its
    timestamps and integers are typed)."""
    directory: Path = tmp_path_factory.mktemp("schemathesis")
    source = small_sqlite_source(directory, rows=100)
    database = f"exportd_st_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    server = LiveServer(directory / "data", workers=1, store_url=pg_url(database))
    server.start()
    try:
        yield Target(server, make_project(server, "acme", source), source)
    finally:
        server.stop()
        drop_database(database)


@schemathesis.check
def error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is exactly `{"error_code", "error_msg"}`, both non-empty."""
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error_code", "error_msg"}, body
        assert body["error_code"] and body["error_msg"], body
    return None


def point_at_real_objects(case: Any, t: Target) -> None:
    """Usually aim a valid case at the project's real objects (deterministically, from
    the case), and always at the test's own source."""
    params = case.path_parameters or {}
    pick = random.Random(repr(sorted(params.items())) + case.method + case.path)
    if "project_id" in params and pick.random() < 0.9:
        params["project_id"] = "acme"
    if "task_id" in params and case.method != "DELETE" and pick.random() < 0.7:
        params["task_id"] = pick.choice(t.tasks)  # finished: streams end, cancels are 409
    if "resource_id" in params and pick.random() < 0.7:
        seed003 = "datasets" in case.path
        params["resource_id"] = t.project.dataset["dataset_id"] if seed003 else t.done_task
    if "dataset_id" in params and case.method in ("GET", "PATCH") and pick.random() < 0.7:
        params["dataset_id"] = t.project.dataset["dataset_id"]
    if isinstance(case.body, dict) and case.method == "POST":
        if case.path.endswith("/datasets"):
            case.body["url"] = t.source
        elif case.path.endswith("/exports") and pick.random() < 0.7:
            case.body["dataset_id"] = "flights"


# Where a schema-valid request may still be refused with 400, for reasons no OpenAPI
# document can state: an export's `fields` and `filter` must name the fields of the
# dataset it names (and filter values fit their types), its split limits must fit the
# header its columns make, its format_options depend on the format; a registration's
# source must exist and be reachable (with table or query per kind). Those two operations
# run every check but positive_data_acceptance; every other operation runs it too, except
# for a case that breaks a rule between parameters (seed 004: `sort_type` only together
# with `sort_field`), which OpenAPI parameters cannot express.
DATA_DEPENDENT = {
    ("POST", "/v1/projects/{project_id}/exports"),
    ("POST", "/v1/projects/{project_id}/datasets"),
    # an import's target must be a writable dataset, its source an upload of the project
    ("POST", "/v1/projects/{project_id}/imports"),
}


def breaks_a_rule_between_parameters(case: Any) -> bool:
    query = case.query or {}
    return "sort_type" in query and "sort_field" not in query


@schemathesis.check
def accepted_when_valid(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, but for what the document cannot state (see above)."""
    if (case.method.upper(), case.path) in DATA_DEPENDENT:
        return None
    if breaks_a_rule_between_parameters(case):
        return None
    return positive_data_acceptance(ctx, response, case)


def exercise(
    operation: Any, mode: GenerationMode, examples: int, t: Target, role: str = "admin"
) -> int:
    """Run `examples` generated cases of one operation; returns how many were sent."""
    sent = 0
    token = t.project.tokens[role]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        nonlocal sent
        if mode is GenerationMode.POSITIVE:  # negative cases stay as generated
            point_at_real_objects(case, t)
        sent += 1
        case.call_and_validate(
            base_url=t.server.url,
            headers={"Authorization": f"Bearer {token}"},
            additional_checks=[error_body, accepted_when_valid],
            excluded_checks=[positive_data_acceptance],  # run by accepted_when_valid
            timeout=30,
        )

    run()
    return sent


@pytest.mark.parametrize("role", ["admin", "writer"])
def test_api_conforms_to_its_openapi(target: Target, role: str) -> None:
    schema = schemathesis.openapi.from_url(f"{target.server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    failures: list[str] = []
    sent = 0
    for op in operations:
        modes = ((GenerationMode.POSITIVE, POSITIVE), (GenerationMode.NEGATIVE, NEGATIVE))
        for mode, examples in modes:
            try:
                sent += exercise(op, mode, examples, target, role)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing of it can be invalid
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, then report
                failures.append(f"{op.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)
    assert sent >= 150  # it did exercise the API
