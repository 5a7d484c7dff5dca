"""A body that fails validation is answered in the client's terms (review F1): fields, never
pydantic's union branches or its "function-after[...]" tags; malformed JSON said plainly."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgesplit.serving.http import describe_request_errors, openai_error
from edgesplit.serving.schemas import CompletionRequest, EmbeddingRequest

app = FastAPI()


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
    message, param = describe_request_errors(e.errors())
    return openai_error(400, message, param=param)


@app.post("/v1/completions")
async def _complete(body: CompletionRequest) -> dict[str, str]:
    return {}


@app.post("/v1/embeddings")
async def _embed(body: EmbeddingRequest) -> dict[str, str]:
    return {}


client = TestClient(app)


@pytest.mark.parametrize(
    ("path", "body", "message", "param"),
    [
        (
            "/v1/completions",
            '{"prompt": ["a", "b"], "max_tokens": 2}',
            "prompt must be a string or a list of token ids, one prompt per request "
            "(got a list of 2; send one request each)",
            "prompt",
        ),
        (
            "/v1/completions",
            '{"prompt": "hi",',
            "the request body is not valid JSON at character 16: Expecting property name "
            "enclosed in double quotes",
            None,
        ),
        ("/v1/completions", '{"prompt": "hi", "max_tokens": "4"}', None, "max_tokens"),
        (
            "/v1/completions",
            '{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}',
            "stop must be a string or a list of up to 4 strings",
            "stop",
        ),
        ("/v1/completions", "[1]", "the request body must be a JSON object", None),
        ("/v1/completions", '{"max_tokens": 2}', "missing field 'prompt'", "prompt"),
        (
            "/v1/completions",
            '{"prompt": "hi", "tempreature": 1}',
            "unknown field 'tempreature'; did you mean 'temperature'?",
            "tempreature",
        ),
        (
            "/v1/embeddings",
            '{"input": [[1, "a"]]}',
            "input must be a string, a list of strings, a list of token ids or a list of such "
            "lists",
            "input",
        ),
    ],
)
def test_validation_errors_name_fields_not_pydantic_internals(
    path: str, body: str, message: str | None, param: str | None
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    if message is not None:
        assert error["message"] == message
    for internal in ("function-after", "constrained", "list[", "body."):
        assert internal not in error["message"]


def test_several_fields_are_all_named_once() -> None:
    response = client.post("/v1/completions", json={"prompt": "hi", "temperature": 3, "n": 2})
    message = response.json()["error"]["message"]
    assert message == (
        "temperature should be less than or equal to 2 (got 3) (and 1 more: n should be less "
        "than or equal to 1 (got 2))"
    )
