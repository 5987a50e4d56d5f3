"""The OpenAPI document describes every endpoint, body and error as the app serves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exportd.api import create_app
from exportd.settings import Settings


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(data_dir=Path(tmp_path_factory.mktemp("openapi"))), workers=0)
    return app.openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if path not in ("/healthz", "/readyz")
    ]


def test_every_operation_documents_its_body_and_errors(openapi: dict[str, Any]) -> None:
    ops = operations(openapi)
    # 21 + the connection profiles (5) and a project's granted ones + tokens list and revoke
    # + imports: uploads (create, get), imports (create, list) and the task routes (5)
    # + a samples dataset's samples: list, count, describe (3)
    # + a dataset's source protection changed (PATCH)
    assert len(ops) == 29 + 9 + 3 + 1
    for method, path, op in ops:
        label = f"{method} {path}"
        responses = op["responses"]
        assert "422" not in responses, label  # bad input is 400, as served
        signed_link = path.startswith("/v1/links/")  # the signature is the credential
        errors = ("400", "401", "404", "500") if "{" in path else ("400", "401", "500")
        if signed_link:
            errors = ("400", "403", "404", "500")
        for code in (*errors, "503"):
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (label, code)
        ok = [c for c in responses if c.startswith("2")]
        assert ok, label
        for code in ok:
            content = responses[code].get("content")
            if code == "204":
                assert not content, label
                continue
            assert content, (label, code)
            for media in content.values():
                assert media.get("schema"), (label, code)
        if method in ("POST", "PATCH", "DELETE") and not path.startswith("/v2"):
            assert "403" in responses, label
        if "requestBody" in op:
            assert "413" in responses, label
        want = None if signed_link else [{"bearer": []}, {"X-Auth-Token": []}]
        assert op.get("security") == want, label
    error = openapi["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error_code", "error_msg"]
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_seed_operations_are_documented_with_their_fields(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    item = schemas["ExportTaskItem"]["properties"]
    assert list(item) == [
        "task_id", "file_name", "status", "fail_reason", "error_code",
        "create_time", "end_time", "is_download", "currentState",
    ]  # fmt: skip
    assert schemas["Seed004Status"]["enum"] == ["CREATING", "SUCCESS", "FAIL", "EXPIRED"]
    assert schemas["Seed001Status"]["enum"] == [
        "WAITING",
        "RUNNING",
        "TIMEOUT",
        "FAILED",
        "SUCCESS",
    ]
    assert schemas["FileStatus"]["enum"] == ["PREPARING", "GENERATED", "DELETED", "FAILED"]
    seed003 = schemas["DatasetExportTask"]["properties"]
    assert seed003["create_time"]["type"] == "integer" and seed003["progress"]["type"] == "number"
    seed001 = openapi["paths"]["/v2/{project_id}/quality/resource/status/{resource_id}"]["get"]
    headers = {p["name"]: p["required"] for p in seed001["parameters"] if p["in"] == "header"}
    assert headers == {"workspace": True}
    listing = openapi["paths"]["/v2/{project_id}/export-tasks"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 20)
    assert openapi["components"]["securitySchemes"]["X-Auth-Token"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Auth-Token",
        "description": "the same tokens in the `X-Auth-Token` header (the seed documents' way)",
    }


def test_dataset_view_fields_are_exactly_the_documented_model() -> None:
    from datetime import UTC, datetime

    from exportd.api.schemas import DatasetView
    from exportd.api.views import dataset_json
    from exportd.model import Dataset

    ds = Dataset(
        "ds_1", "acme", "flights", "sql", "postgresql://u:secret@h/db", "flights", None, "id",
        [{"name": "id", "type": "BIGINT", "kind": "int"}], {}, datetime.now(UTC),
    )  # fmt: skip
    body = dataset_json(ds)
    assert set(body) == set(DatasetView.model_fields)
    DatasetView.model_validate(body)
    assert "secret" not in str(body)


def test_the_rules_the_service_checks_are_stated(tmp_path: Path) -> None:
    """Rules exportd enforces appear in the document: file-name and prefix patterns,
    the format enum, this server's parallelism limit, no NUL in any string parameter."""
    settings = Settings(data_dir=tmp_path, max_parallelism=12)
    doc = create_app(settings, workers=0).openapi()
    schemas = doc["components"]["schemas"]
    export = schemas["ExportRequest"]["properties"]
    assert export["format"]["enum"] == ["csv", "tsv", "jsonl", "json", "parquet", "xlsx"]
    assert "manifest" in export["file_name"]["pattern"]
    [integer] = [b for b in export["parallelism"]["anyOf"] if b.get("type") == "integer"]
    assert integer["maximum"] == 12
    assert schemas["Destination"]["properties"]["prefix"]["pattern"].startswith("^[A-Za-z0-9]")
    settings_body = schemas["ProjectSettingsRequest"]["properties"]
    assert settings_body["storage_prefix"]["pattern"] == export_prefix_pattern(schemas)
    notify = schemas["NotifySpec"]["properties"]
    assert "pattern" in notify["emails"]["anyOf"][0]["items"]
    assert notify["webhook_url"]["anyOf"][0]["pattern"].startswith("^[Hh][Tt][Tt][Pp]")
    for method, path, op in operations(doc):
        for param in op.get("parameters", []):
            schema = param["schema"]
            strings = [schema, *schema.get("anyOf", [])]
            for s in strings:
                if s.get("type") == "string" and "enum" not in s and "format" not in s:
                    assert s.get("pattern") == "^[^\\x00]*$", (method, path, param["name"])


def export_prefix_pattern(schemas: dict[str, Any]) -> str:
    return str(schemas["Destination"]["properties"]["prefix"]["pattern"])


def test_store_outages_and_readiness_are_documented(openapi: dict[str, Any]) -> None:
    """Every route that needs the store documents its 503 STORE_UNAVAILABLE with a
    Retry-After header; /readyz documents its 503; /healthz (liveness) none."""
    for method, path, op in operations(openapi):
        unavailable = op["responses"]["503"]
        assert "STORE_UNAVAILABLE" in unavailable["description"], (method, path)
        assert "Retry-After" in unavailable["headers"], (method, path)
    ready = openapi["paths"]["/readyz"]["get"]["responses"]
    assert set(ready) == {"200", "503"}
    assert ready["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "503" not in openapi["paths"]["/healthz"]["get"]["responses"]
