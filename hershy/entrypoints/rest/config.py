"""Names, environment variables and secrets over REST: a translation onto ProgramConfigService.

- `POST /programs/{program}/rename` `{"alias": "bot"}` (`""`: no name)
- `POST /programs/{program}/env` `{"set": {"NAME": "value"}, "unset": ["OTHER"]}`
- `GET /programs/{program}/secrets`; `PUT /programs/{program}/secrets/{name}`
  `{"value": "text"}` or `{"value_base64": "..."}`; `DELETE` the same path.

`{program}` is the id or the caller's alias. A secret's value is only ever
read from a request body: no answer, error or header repeats it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web

from hershy.domain.config import MAX_ENV_TOTAL_BYTES, MAX_SECRET_BYTES
from hershy.entrypoints.rest import shapes
from hershy.entrypoints.rest.auth import credentials
from hershy.entrypoints.rest.errors import bad_request, json_response
from hershy.entrypoints.rest.uploads import read_body
from hershy.v1 import config_pb2 as config_pb
from hershy.v1 import config_pb2_grpc as config_grpc
from hershy.v1 import program_pb2 as pb

CALL_TIMEOUT = 30.0
#: A value as base64 in JSON, and the keys around it.
MAX_SECRET_BODY_BYTES = MAX_SECRET_BYTES * 2 + 1024
MAX_ENV_BODY_BYTES = MAX_ENV_TOTAL_BYTES * 2 + 4096


def secret_json(secret: config_pb.Secret) -> dict[str, Any]:
    return {
        "name": secret.secret_id,
        "version": secret.version,
        "created_at": shapes.rfc3339(secret.create_time),
        "updated_at": shapes.rfc3339(secret.update_time),
        "status_note": secret.status_note,
    }


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        # Never the parser's message: it quotes the body, which may be a secret.
        raise bad_request("body", "is not a JSON object") from None
    if not isinstance(data, dict):
        raise bad_request("body", "must be a JSON object")
    return data


def secret_value(data: dict[str, Any]) -> bytes:
    text, encoded = data.get("value"), data.get("value_base64")
    if (text is None) == (encoded is None):
        raise bad_request("value", "give exactly one of value (text) and value_base64")
    if text is not None:
        if not isinstance(text, str):
            raise bad_request("value", "must be a string")
        return text.encode()
    if not isinstance(encoded, str):
        raise bad_request("value_base64", "must be a string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("value_base64", "is not valid base64") from None


class ConfigRoutes:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub: config_grpc.ProgramConfigServiceAsyncStub = (
            config_grpc.ProgramConfigServiceStub(channel)
        )

    def add_to(self, app: web.Application, address: Callable[[], str]) -> None:
        """`address`: where the shim listens, for answers to requests without a usable Host."""
        self._address = address
        add = app.router.add_route
        add("POST", "/programs/{program_id}/rename", self.rename)
        add("POST", "/programs/{program_id}/env", self.set_env)
        add("GET", "/programs/{program_id}/secrets", self.list_secrets)
        add("PUT", "/programs/{program_id}/secrets/{secret_id}", self.set_secret)
        add("DELETE", "/programs/{program_id}/secrets/{secret_id}", self.delete_secret)

    def _program(self, request: web.Request, program: pb.Program) -> web.Response:
        return json_response(
            shapes.program_json(program, shapes.base_url(request, self._address()))
        )

    @staticmethod
    def _name(request: web.Request) -> str:
        return shapes.program_name(request.match_info["program_id"])

    async def rename(self, request: web.Request) -> web.Response:
        data = _json_object(await read_body(request, 4096))
        alias = data.get("alias", "")
        if not isinstance(alias, str):
            raise bad_request("alias", "must be a string")
        answer = await self._stub.RenameProgram(
            config_pb.RenameProgramRequest(name=self._name(request), alias=alias),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return self._program(request, answer)

    async def set_env(self, request: web.Request) -> web.Response:
        data = _json_object(await read_body(request, MAX_ENV_BODY_BYTES))
        set_, unset = data.get("set", {}), data.get("unset", [])
        if not isinstance(set_, dict) or not all(isinstance(v, str) for v in set_.values()):
            raise bad_request("set", "must be an object of name -> string")
        if not isinstance(unset, list) or not all(isinstance(v, str) for v in unset):
            raise bad_request("unset", "must be a list of names")
        answer = await self._stub.SetProgramEnv(
            config_pb.SetProgramEnvRequest(name=self._name(request), set=set_, unset=unset),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return self._program(request, answer)

    async def list_secrets(self, request: web.Request) -> web.Response:
        answer = await self._stub.ListSecrets(
            config_pb.ListSecretsRequest(parent=self._name(request)),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return json_response({"secrets": [secret_json(secret) for secret in answer.secrets]})

    async def set_secret(self, request: web.Request) -> web.Response:
        value = secret_value(_json_object(await read_body(request, MAX_SECRET_BODY_BYTES)))
        answer = await self._stub.SetSecret(
            config_pb.SetSecretRequest(
                parent=self._name(request),
                secret_id=request.match_info["secret_id"],
                value=value,
            ),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return json_response(secret_json(answer))

    async def delete_secret(self, request: web.Request) -> web.Response:
        name = f"{self._name(request)}/secrets/{request.match_info['secret_id']}"
        answer = await self._stub.DeleteSecret(
            config_pb.DeleteSecretRequest(name=name),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return json_response(secret_json(answer))
