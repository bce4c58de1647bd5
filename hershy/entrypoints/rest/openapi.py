"""The OpenAPI 3.0 description of the REST API, served at `/openapi.json`.

Written by hand next to the routes (app.py) and checked against them by the
property-based fuzz test (tests/e2e/test_openapi_fuzz.py) and by a test that
every route is described.
"""

from __future__ import annotations

from typing import Any

from hershy.domain import limits
from hershy.domain.quotas import QUOTA_NAMES
from hershy.entrypoints.rest.shapes import LOG_STREAM_NAMES, STATE_LABELS
from hershy.entrypoints.rest.uploads import MAX_BODY_BYTES

JSON = "application/json"
PROGRAM_ID_PATTERN = f"^{limits.PROGRAM_ID_PATTERN}$"
USER_ID_PATTERN = f"^{limits.USER_ID_PATTERN}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ERRORS = {
    "400": _error("Bad input; `field` names it."),
    "404": _error("No such program (or it was deleted)."),
    "409": _error("The program's state does not allow this; `state` names it."),
    "413": _error("The build context is over a size limit."),
    "429": _error(
        "The user's quota would be passed: `quota` names it, `limit` and `usage` in its units."
    ),
    "503": _error("The Host (or the program) is not ready."),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _ERRORS[code] for code in codes}


_SECRET_ID = {
    "name": "secret_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
}
_PROGRAM_ID = {
    "name": "program_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": PROGRAM_ID_PATTERN},
}


def _program_op(summary: str, *codes: str, schema: str = "Program", **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [_PROGRAM_ID],
        "responses": {"200": _json(_ref(schema), "The program."), **_errors(*codes)},
        **extra,
    }


_USER_ID = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": USER_ID_PATTERN},
}
_TIME = {"type": "string", "format": "date-time"}
ALIAS_PATTERN = "^[a-z][a-z0-9-]{0,62}$"
_ALIAS = {
    "type": "string",
    "pattern": ALIAS_PATTERN,
    "description": "A name unique among the user's programs, never `prog-...`; empty: none.",
}
_ENV = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "Environment variables: names `[A-Z_][A-Z0-9_]*`, not `HERSHY_...`; at most "
    "64, 4 KiB each, 32 KiB in all. Plain: shown to the owner. The next start uses them.",
}
_NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}
_INT64 = {"type": "integer", "format": "int64", "minimum": 0}
_FILES = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "Relative `/`-separated path -> UTF-8 text.",
}
_FILES_BASE64 = {
    "type": "object",
    "additionalProperties": {"type": "string", "format": "byte"},
    "description": "Relative path -> base64 content, for files that are not UTF-8 text.",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code", "message"],
        "properties": {
            "error": {"type": "string", "description": "A stable reason, e.g. PROGRAM_NOT_FOUND."},
            "code": {"type": "integer", "description": "The HTTP status."},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "The bad input, for 400 and 413."},
            "state": {"type": "string", "enum": STATE_LABELS},
            "oldest_revision": {"type": "integer"},
            "quota": {"type": "string", "enum": list(QUOTA_NAMES)},
            "limit": {"type": "integer", "format": "int64"},
            "usage": {"type": "integer", "format": "int64"},
        },
    },
    "QuotaLimits": {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: {**_INT64, "nullable": True} for name in QUOTA_NAMES},
        "description": (
            "A user's limits; null or absent: no limit. programs and state_bytes count every "
            "program; memory_bytes and milli_cpus the programs that run or may run."
        ),
    },
    "UserQuota": {
        "type": "object",
        "required": ["user_id", "limits", "usage"],
        "properties": {
            "user_id": {"type": "string"},
            "limits": _ref("QuotaLimits"),
            "usage": {
                "type": "object",
                "properties": {name: _INT64 for name in QUOTA_NAMES},
                "description": "What the user's programs hold now, counted as the limits are.",
            },
        },
    },
    "Resources": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "memory_bytes": _INT64,
            "milli_cpus": _INT64,
            "pids": _INT64,
            "state_bytes": {
                **_INT64,
                "description": "Size of the /state volume; writing past it fails (ENOSPC).",
            },
        },
        "description": "Container limits; 0 or absent means the Host's default.",
    },
    "ReadinessCheck": {
        "type": "object",
        "additionalProperties": False,
        "description": (
            "How the Host tells the program is initialised (readiness) and alive (liveness). "
            "Absent keys take Hersh's defaults: GET /watcher/status, field `state`, ready "
            "when `Ready` or `Running` after the start was seen settling (after `InitRun`, "
            "or the same answer for settle_seconds), failed when `Crashed` or `Killed`."
        ),
        "properties": {
            "path": {"type": "string", "description": "Default `/watcher/status`."},
            "field": {
                "type": "string",
                "description": "The answer's JSON field (dots look into objects); default "
                "`state`; empty: any 2xx answer is ready.",
            },
            "ready_values": {"type": "array", "items": {"type": "string"}, "maxItems": 16},
            "failed_values": {"type": "array", "items": {"type": "string"}, "maxItems": 16},
            "timeout_seconds": {
                "type": "number",
                "minimum": 0,
                "description": "How long a start may take; 0: the Host's --ready-timeout.",
            },
            "settle_seconds": {"type": "number", "minimum": 0, "maximum": 60},
            "liveness_grace_seconds": {
                "type": "number",
                "minimum": 0,
                "description": "After READY: no answer or a failed state for this long is a "
                "crash (stop, then the backoff restart); default 30.",
            },
        },
    },
    "RestartPolicy": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "mode": {
                "type": "string",
                "enum": ["always", "on-failure", "never"],
                "description": "always (default): every end restarts it with backoff; "
                "on-failure: exit code 0 ends it stopped; never: exit 0 stopped, else error.",
            },
            "max_restarts": {
                "type": "integer",
                "minimum": 0,
                "description": "At most this many automatic restarts within window_seconds, "
                "then error with the reason; 0: no limit.",
            },
            "window_seconds": {"type": "number", "minimum": 0},
        },
    },
    "StopSettings": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "signal": {
                "type": "string",
                "enum": ["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL"],
                "description": "Default SIGTERM. Hersh v0.2.0 has no handler: it dies at once.",
            },
            "grace_seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": 300,
                "description": "Then SIGKILL; 0: the Host's --stop-grace.",
            },
        },
    },
    "Program": {
        "type": "object",
        "required": ["program_id", "user_id", "build_id", "state", "proxy_url", "created_at"],
        "properties": {
            "program_id": {"type": "string", "pattern": PROGRAM_ID_PATTERN},
            "user_id": {"type": "string"},
            "build_id": {"type": "string"},
            "state": {"type": "string", "enum": STATE_LABELS},
            "proxy_url": {
                "type": "string",
                "description": (
                    "The program's port through the Host's proxy: "
                    "`${proxy_url}/watcher/status` is its WatcherAPI's status."
                ),
            },
            "proxy_target": {
                "type": "string",
                "description": (
                    "Where the Host itself reaches the WatcherAPI, as the runtime placed "
                    "its current or last run (the Docker and fake runtimes: 127.0.0.1:PORT); "
                    "empty until it first runs. Clients use proxy_url."
                ),
            },
            "created_at": _TIME,
            "updated_at": _TIME,
            "image_id": {"type": "string"},
            "container_id": {"type": "string"},
            "node": {
                "type": "string",
                "readOnly": True,
                "description": (
                    "Where the runtime placed its current or last run on a cluster "
                    "(--runtime kubernetes: the node); empty on Docker."
                ),
            },
            "pod": {
                "type": "string",
                "readOnly": True,
                "description": "The Pod of its current or last run (--runtime kubernetes).",
            },
            "error": {"type": "string", "description": "Why it failed; empty if it did not."},
            "error_msg": {
                "type": "string",
                "description": "The same as `error` (the original's name).",
            },
            "restart_count": {"type": "integer"},
            "last_exit_code": {"type": "integer", "nullable": True},
            "revision": {"type": "integer", "format": "int64"},
            "run": {"type": "integer", "format": "int64"},
            "runtime": {"type": "string"},
            "resources": _ref("Resources"),
            "next_restart_at": _NULLABLE_TIME,
            "ready_at": _NULLABLE_TIME,
            "restart_pending": {"type": "boolean"},
            "status_note": {
                "type": "string",
                "description": "What it waits for, e.g. `build queued: 2 ahead`; empty if nothing.",
            },
            "alias": {
                "type": "string",
                "description": "The name its user chose (`/programs/{alias}` finds it); or empty.",
            },
            "environment": _ENV,
            "watcher_state": {
                "type": "string",
                "description": "The state its WatcherAPI last reported (Hersh: Ready, Running, "
                "InitRun, WaitRecover, Crashed, Killed, Stopped); empty before it answered.",
            },
            "health": {
                "type": "string",
                "enum": ["unknown", "initialising", "healthy", "degraded", "unhealthy"],
            },
            "health_reason": {"type": "string", "description": "Why not healthy; empty if it is."},
            "watcher_answered_at": {
                **_NULLABLE_TIME,
                "description": "When it last answered, as of the last change of its view.",
            },
            "watcher_state_since": _NULLABLE_TIME,
            "unhealthy_since": _NULLABLE_TIME,
            "readiness": _ref("ReadinessCheck"),
            "restart_policy": _ref("RestartPolicy"),
            "stop": _ref("StopSettings"),
            "revision_number": {
                "type": "integer",
                "format": "int64",
                "description": "The program revision it runs (1 from create; not `revision`).",
            },
            "latest_revision_number": {"type": "integer", "format": "int64"},
            "rollout": {**_ref("Rollout"), "nullable": True},
        },
    },
    "Rollout": {
        "type": "object",
        "description": "The latest deploy: in progress (BUILDING, SWITCHING, REVERTING) or how "
        "it ended (SUCCEEDED, REVERTED, CANCELLED, FAILED); `reason` says why.",
        "properties": {
            "target_revision_number": {"type": "integer", "format": "int64"},
            "previous_revision_number": {"type": "integer", "format": "int64"},
            "phase": {
                "type": "string",
                "enum": [
                    "BUILDING",
                    "SWITCHING",
                    "REVERTING",
                    "SUCCEEDED",
                    "REVERTED",
                    "CANCELLED",
                    "FAILED",
                ],
            },
            "reason": {"type": "string"},
            "target_build_id": {"type": "string"},
            "started_at": _TIME,
            "ended_at": _NULLABLE_TIME,
        },
    },
    "Revision": {
        "type": "object",
        "properties": {
            "number": {"type": "integer", "format": "int64"},
            "build_id": {"type": "string", "description": "The source's content hash."},
            "resources": _ref("Resources"),
            "created_by": {"type": "string"},
            "created_at": _TIME,
            "description": {"type": "string"},
            "kept": {"type": "boolean", "description": "Image and source kept: rollback works."},
            "current": {"type": "boolean"},
            # null in revisions recorded before revisions carried them.
            "readiness": {**_ref("ReadinessCheck"), "nullable": True},
            "restart_policy": {**_ref("RestartPolicy"), "nullable": True},
            "stop": {**_ref("StopSettings"), "nullable": True},
            "changed_fields": {
                "type": "array",
                "items": {"type": "string"},
                "description": (
                    "What it changed from the revision before it: build_id, "
                    "resources.memory_bytes, restart_policy.mode, stop.grace_seconds, ...; "
                    "empty for the first. Environment variables and secrets are not part "
                    "of a revision."
                ),
            },
        },
    },
    "RevisionList": {
        "type": "object",
        "required": ["revisions"],
        "properties": {"revisions": {"type": "array", "items": _ref("Revision")}},
    },
    "UpdateProgram": {
        "type": "object",
        "additionalProperties": False,
        "description": (
            "The fields to change, as a new revision of the same source rolled out like a "
            "deploy (the program restarts on them; reverted if it never becomes Ready). "
            "A key left out of an object named by the mask takes its default."
        ),
        "properties": {
            "resources": _ref("Resources"),
            "readiness": _ref("ReadinessCheck"),
            "restart_policy": _ref("RestartPolicy"),
            "stop": _ref("StopSettings"),
        },
    },
    "LifecycleAnswer": {
        "allOf": [
            _ref("Program"),
            {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {
                        "type": "string",
                        "description": "What the request did, for a person.",
                    }
                },
            },
        ],
    },
    "Logs": {
        "type": "object",
        "required": ["program_id", "container_id", "logs", "timestamp"],
        "description": "The original system's log answer.",
        "properties": {
            "program_id": {"type": "string"},
            "container_id": {"type": "string", "description": "Empty before the first run."},
            "logs": {"type": "string", "description": "The lines, each ending in a newline."},
            "timestamp": _TIME,
            "lines": {"type": "integer", "description": "How many lines `logs` holds."},
            "truncated": {
                "type": "boolean",
                "description": "Present (true) when the oldest asked-for lines were left out: "
                f"one answer holds at most {limits.MAX_JSON_LOG_BYTES // limits.MiB} MiB of text "
                "(NDJSON has no such limit).",
            },
        },
    },
    "ProgramList": {
        "type": "object",
        "required": ["programs", "count", "next_page_token"],
        "properties": {
            "programs": {"type": "array", "items": _ref("Program")},
            "count": {"type": "integer", "description": "How many programs match in all."},
            "next_page_token": {"type": "string", "description": "Empty on the last page."},
        },
    },
    "CreateProgram": {
        "type": "object",
        "required": ["user_id", "dockerfile"],
        "description": (
            "Other top-level keys are ignored, as the original system did, and named in "
            'the answer\'s `Warning: 299 - "unknown keys ignored: ..."` header.'
        ),
        "properties": {
            "user_id": {"type": "string", "pattern": USER_ID_PATTERN},
            "dockerfile": {
                "type": "string",
                "minLength": 1,
                "description": "Checked by the build policy: FROM only scratch, an earlier "
                "stage or an allowlisted base image; no remote ADD, no COPY --from an image, "
                "no ONBUILD. A refusal is 400 naming the line.",
            },
            "src_files": _FILES,
            "src_files_base64": _FILES_BASE64,
            "resources": _ref("Resources"),
            "alias": _ALIAS,
            "environment": _ENV,
            "readiness": _ref("ReadinessCheck"),
            "restart_policy": _ref("RestartPolicy"),
            "stop": _ref("StopSettings"),
        },
    },
    "Source": {
        "type": "object",
        "required": [
            "program_id",
            "dockerfile",
            "src_files",
            "src_files_base64",
            "build_id",
            "files",
            "retrieved_at",
        ],
        "properties": {
            "program_id": {"type": "string"},
            "dockerfile": {"type": "string"},
            "src_files": _FILES,
            "src_files_base64": _FILES_BASE64,
            "build_id": {"type": "string"},
            "files": {
                **_FILES,
                "description": (
                    "The original's shape: every text file, the Dockerfile among them as "
                    "`Dockerfile`; files that are not UTF-8 are only in src_files_base64."
                ),
            },
            "retrieved_at": _TIME,
        },
    },
    "LogEntry": {
        "type": "object",
        "description": "One line of `GET /programs/{program_id}/logs` (one JSON object a line).",
        "properties": {
            "time": _TIME,
            "stream": {"type": "string", "enum": LOG_STREAM_NAMES},
            "run": {"type": "integer"},
            "line": {"type": "string"},
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
}

_SSE = {
    "description": (
        "Server-Sent Events: `snapshot` (one per program, no id), `synced` (id: the "
        "snapshot's revision), then `created`, `updated`, `deleted` (id: the change's "
        "revision), `resync` when the stream fell behind (a fresh snapshot follows). "
        "Data: the program as JSON. A comment line every 15 s keeps the stream open. "
        "`error` (data: the error body) ends a stream that failed after it began, e.g. "
        "UNAUTHENTICATED once its token was revoked."
    ),
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
_RESUME = [
    {
        "name": "resume_revision",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0},
        "description": "Every change after this revision instead of a snapshot.",
    },
    {
        "name": "Last-Event-ID",
        "in": "header",
        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
        "description": "Sent by a reconnecting EventSource; wins over resume_revision.",
    },
]
_GONE = {"410": _error("The resume revision is no longer remembered: watch without it.")}

_PROXY_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")


def _proxy_path(any_path: bool) -> dict[str, Any]:
    responses = {
        "default": {"description": "Whatever the program's WatcherAPI answers, passed through."},
        **_errors("400", "404"),
        "502": _error(
            "The WatcherAPI does not answer, answers malformed HTTP, or refused a WebSocket; "
            "or the program's address is not one its runtime hands out (BAD_PROXY_TARGET)."
        ),
        "503": _error("The program is not Ready; `state` names its state."),
        "504": _error("The WatcherAPI did not answer in time."),
    }
    parameters = [
        _PROGRAM_ID,
        {
            "name": "path",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": (
                "Forwarded as /{path}; dot segments and encoded slashes: 400."
                if any_path
                else "Forwarded as /watcher/{path}; dot segments and encoded slashes: 400."
            ),
        },
    ]
    summary = (
        "Reverse proxy to any path of the program's WatcherAPI port (the original's "
        "prefix: `proxy_url` points here, so `${proxy_url}/watcher/status` works)."
        if any_path
        else "Reverse proxy to the program's WatcherAPI (any method, streaming, WebSocket)."
    )
    return {
        method: {
            "summary": summary,
            "tags": ["proxy"],
            "parameters": parameters,
            "responses": responses,
        }
        for method in _PROXY_METHODS
    }


PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "The shim is up.",
            "tags": ["health"],
            "responses": {"200": _json(_ref("Status"), "Up.")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "The Host's figures in Prometheus' text format (the admin's token).",
            "tags": ["health"],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _error("No token, or not a valid one."),
                "403": _error("Not the admin's token."),
            },
        }
    },
    "/readyz": {
        "get": {
            "summary": (
                "The gRPC core answers its health check, recovery after a restart is done "
                "and the proxy's view is current."
            ),
            "tags": ["health"],
            "responses": {
                "200": _json(_ref("Status"), "Ready."),
                "503": _error(
                    "Not ready: `CORE_NOT_SERVING`, `RECOVERING` (the message says why: the "
                    "runtime is being reconciled, or Docker fails and it is retried), "
                    "`PROXY_NOT_SYNCED`."
                ),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document.",
            "tags": ["health"],
            "responses": {"200": {"description": "OpenAPI 3.0.", "content": {JSON: {}}}},
        }
    },
    "/programs": {
        "post": {
            "summary": "Register a program from a Dockerfile and its files (it starts Created).",
            "parameters": [
                {
                    "name": "user_id",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "The owner, for a tar upload (a JSON body carries its own).",
                }
            ],
            "requestBody": {
                "required": True,
                "description": f"At most {MAX_BODY_BYTES} bytes.",
                "content": {
                    JSON: {"schema": _ref("CreateProgram")},
                    "application/x-tar": {
                        "schema": {
                            "type": "string",
                            "format": "binary",
                            "description": (
                                "The build context: Dockerfile at the top, regular files "
                                "and folders only, every member's data present (a truncated "
                                "tar is 400 naming the member); pass user_id in the query."
                            ),
                        }
                    },
                },
            },
            "responses": {
                "201": _json(_ref("Program"), "Created."),
                **_errors("400", "413", "429"),
                "503": _error(
                    "The Host is not ready, or the user already has "
                    f"{limits.MAX_CREATES_IN_PROGRESS_PER_USER} creates in progress "
                    "(RESOURCE_EXHAUSTED: retry once one has finished)."
                ),
            },
        },
        "get": {
            "summary": "Programs in creation order, a page at a time.",
            "parameters": [
                {
                    "name": "page_size",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": limits.MAX_PAGE_SIZE},
                    "description": f"Default {limits.DEFAULT_PAGE_SIZE}.",
                },
                {"name": "page_token", "in": "query", "schema": {"type": "string"}},
                {"name": "user_id", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": _json(_ref("ProgramList"), "A page."), **_errors("400")},
        },
    },
    "/programs/{program_id}": {
        "get": _program_op("One program.", "400", "404"),
        "patch": {
            "summary": "AIP-134 update: the masked resources change as a new revision (a rollout).",
            "parameters": [
                _PROGRAM_ID,
                {
                    "name": "update_mask",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": (
                        "Comma-separated field paths: resources, readiness, restart_policy, "
                        "stop, or fields of them (resources.memory_bytes, "
                        "restart_policy.mode, stop.grace_seconds, readiness.timeout_seconds, "
                        "...); default: the fields the body names (an empty object: the whole "
                        "field). Any other path is a 400 naming it."
                    ),
                },
            ],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("UpdateProgram")}}},
            "responses": {
                "202": _json(_ref("LifecycleAnswer"), "The rollout began."),
                **_errors("400", "404", "409", "429"),
            },
        },
        "delete": {
            "summary": "Stop and remove everything the program owns; waits until it is gone.",
            "parameters": [_PROGRAM_ID],
            "responses": {
                "200": _json(_ref("LifecycleAnswer"), "Deleted: its last state, Deleted."),
                "202": _json(_ref("LifecycleAnswer"), "Still being deleted after 30 s."),
                **_errors("400", "404"),
                "500": _error("Removing what the program owns failed: DELETE again."),
            },
        },
    },
    "/programs/{program_id}/start": {
        "post": _program_op(
            "Build (or reuse) and start.", "400", "404", "409", "429", schema="LifecycleAnswer"
        ),
    },
    "/programs/{program_id}/stop": {
        "post": {
            **_program_op("Stop; it ends Stopped.", "400", "404", schema="LifecycleAnswer"),
            "description": (
                "On a program at rest (Created, Stopped) a 200 that changes nothing, "
                "its `message` saying so, as the original system answered (gRPC's StopProgram "
                "still refuses with FAILED_PRECONDITION). In Error it clears the error "
                "and ends Stopped."
            ),
        }
    },
    "/programs/{program_id}/restart": {
        "post": _program_op(
            "Stop if running, then start.", "400", "404", "409", "429", schema="LifecycleAnswer"
        ),
    },
    "/programs/{program_id}/deploy": {
        "post": {
            "summary": "Roll out a new revision from new source, in place (same id, same /state).",
            "description": (
                "The body of POST /programs (JSON or a tar; its user_id is ignored). A Ready "
                "program keeps running while the new image builds, then switches; if the new "
                "revision fails to build or to become Ready, the previous one runs again by "
                "itself and `rollout.reason` says why. Resources left out stay as they are."
            ),
            "parameters": [_PROGRAM_ID],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": _ref("CreateProgram")},
                    "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "202": _json(_ref("LifecycleAnswer"), "The rollout began (or, at rest, applied)."),
                **_errors("400", "404", "409", "413", "429"),
            },
        },
    },
    "/programs/{program_id}/revisions": {
        "get": _program_op(
            "The program's revisions, newest first.", "400", "404", schema="RevisionList"
        ),
    },
    "/programs/{program_id}/rollback": {
        "post": {
            "summary": "Roll out a kept revision again, as a new revision.",
            "parameters": [
                _PROGRAM_ID,
                {
                    "name": "revision",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "The revision number; default: the one before the current.",
                },
            ],
            "responses": {
                "202": _json(_ref("LifecycleAnswer"), "The rollout began."),
                **_errors("400", "404", "409", "429"),
            },
        },
    },
    "/programs/{program_id}/wait": {
        "get": {
            "summary": "Block until the program reaches a state.",
            "parameters": [
                _PROGRAM_ID,
                {
                    "name": "state",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": f"Any case of {', '.join(STATE_LABELS)}; default Ready.",
                },
                {
                    "name": "timeout",
                    "in": "query",
                    "schema": {
                        "type": "number",
                        "exclusiveMinimum": True,
                        "minimum": 0,
                        "maximum": int(limits.MAX_WAIT_SECONDS),
                    },
                    "description": f"Seconds, default {limits.DEFAULT_WAIT_SECONDS:g}.",
                },
            ],
            "responses": {
                "200": _json(_ref("Program"), "The program, in that state."),
                **_errors("400", "404"),
                "408": _error("Timed out; the message names the state it is in."),
                "409": _error("The program failed (Error) while waiting."),
            },
        }
    },
    "/programs/{program_id}/logs": {
        "get": {
            "summary": "The program's logs: build, stdout, stderr and the Host's notes.",
            "parameters": [
                _PROGRAM_ID,
                {
                    "name": "tail",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                    "description": (
                        "Only the last this-many lines (after filtering); default 200 for "
                        "the JSON answer, all for NDJSON."
                    ),
                },
                {
                    "name": "follow",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                    "description": "Keep streaming new lines (implies NDJSON).",
                },
                {
                    "name": "format",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["json", "ndjson"]},
                    "description": (
                        "json (the default, unless `follow` or `Accept: application/x-ndjson`): "
                        "one Logs object; ndjson: one LogEntry a line. json with follow: 400."
                    ),
                },
                {
                    "name": "stream",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": f"Comma-separated: {', '.join(LOG_STREAM_NAMES)}; default all.",
                },
            ],
            "responses": {
                "200": {
                    "description": (
                        "JSON: the original's Logs object. NDJSON: one LogEntry JSON object "
                        "a line; a stream that fails after it began (e.g. its token "
                        "revoked) ends with a line in the error shape."
                    ),
                    "content": {
                        JSON: {"schema": _ref("Logs")},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                },
                **_errors("400", "404"),
            },
        }
    },
    "/programs/{program_id}/source": {
        "get": {
            "summary": "The Dockerfile and files the program was created from.",
            "parameters": [_PROGRAM_ID],
            "responses": {"200": _json(_ref("Source"), "The source."), **_errors("400", "404")},
        }
    },
    "/programs/{program_id}/events": {
        "get": {
            "summary": "One program's changes as Server-Sent Events.",
            "tags": ["streaming"],
            "parameters": [_PROGRAM_ID, *_RESUME],
            "responses": {"200": _SSE, **_errors("400", "404"), **_GONE},
        }
    },
    "/events": {
        "get": {
            "summary": "Every program's changes as Server-Sent Events.",
            "tags": ["streaming"],
            "parameters": _RESUME,
            "responses": {"200": _SSE, **_errors("400"), **_GONE},
        }
    },
    "/users/{user_id}/quota": {
        "get": {
            "summary": "A user's quota and usage (the admin: anyone's; a user: their own).",
            "tags": ["quotas"],
            "parameters": [_USER_ID],
            "responses": {
                "200": _json(_ref("UserQuota"), "The quota."),
                **_errors("400"),
                "403": _error("Another user's quota, with a user's token."),
            },
        },
        "put": {
            "summary": "Set every limit of a user's quota (the admin's token).",
            "tags": ["quotas"],
            "parameters": [_USER_ID],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("QuotaLimits")}}},
            "responses": {
                "200": _json(_ref("UserQuota"), "The quota as set."),
                **_errors("400"),
                "403": _error("Not the admin's token."),
            },
        },
    },
    "/programs/{program_id}/rename": {
        "post": {
            "summary": "Give the program a new name, or none (empty); the old one is free at once.",
            "tags": ["config"],
            "parameters": [_PROGRAM_ID],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["alias"],
                            "properties": {"alias": _ALIAS},
                        }
                    }
                },
            },
            "responses": {
                "200": _json(_ref("Program"), "The program, renamed."),
                **_errors("400", "404", "409"),
            },
        }
    },
    "/programs/{program_id}/env": {
        "post": {
            "summary": "Set and remove environment variables (the next start uses them).",
            "tags": ["config"],
            "parameters": [_PROGRAM_ID],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "set": _ENV,
                                "unset": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(_ref("Program"), "The program with its variables."),
                **_errors("400", "404", "409", "413", "429"),
            },
        }
    },
    "/programs/{program_id}/secrets": {
        "get": {
            "summary": "The program's secrets: names, versions, times; never a value.",
            "tags": ["config"],
            "parameters": [_PROGRAM_ID],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["secrets"],
                        "properties": {"secrets": {"type": "array", "items": _ref("Secret")}},
                    },
                    "The secrets, by name.",
                ),
                **_errors("400", "404"),
            },
        }
    },
    "/programs/{program_id}/secrets/{secret_id}": {
        "put": {
            "summary": "Create or replace a secret (write-only; the next start hands it over).",
            "tags": ["config"],
            "parameters": [_PROGRAM_ID, _SECRET_ID],
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _ref("SecretValue")}},
            },
            "responses": {
                "200": _json(_ref("Secret"), "The secret as set, without its value."),
                **_errors("400", "404", "409", "413", "429"),
            },
        },
        "delete": {
            "summary": "Remove a secret (a restart takes it away from the program).",
            "tags": ["config"],
            "parameters": [_PROGRAM_ID, _SECRET_ID],
            "responses": {
                "200": _json(_ref("Secret"), "What the secret was, without its value."),
                **_errors("400", "404", "409"),
            },
        },
    },
    "/programs/{program_id}/watcher/{path}": _proxy_path(any_path=False),
    "/programs/{program_id}/proxy/{path}": _proxy_path(any_path=True),
}

_TOKEN_ID = {"name": "token_id", "in": "path", "required": True, "schema": {"type": "string"}}
SCHEMAS["Secret"] = {
    "type": "object",
    "required": ["name", "version", "created_at", "updated_at"],
    "properties": {
        "name": {"type": "string", "description": "The program reads it at /run/secrets/{name}."},
        "version": {"type": "integer", "format": "int64"},
        "created_at": _TIME,
        "updated_at": _TIME,
        "status_note": {
            "type": "string",
            "description": "What the change means for the running program (a restart hands "
            "it over); empty when nothing runs.",
        },
    },
}
SCHEMAS["SecretValue"] = {
    "type": "object",
    "description": "Exactly one of `value` (text, sent as UTF-8) and `value_base64`: 1 byte to "
    "64 KiB; a program's secrets hold at most 32 values, 256 KiB in all.",
    "properties": {
        "value": {"type": "string", "minLength": 1},
        "value_base64": {"type": "string", "format": "byte"},
    },
}
SCHEMAS["Token"] = {
    "type": "object",
    "required": ["token_id", "user_id", "admin", "created_at", "revoked_at"],
    "properties": {
        "token_id": {"type": "string", "description": "`tok-...`; never the secret."},
        "user_id": {"type": "string"},
        "admin": {"type": "boolean"},
        "created_at": _NULLABLE_TIME,
        "revoked_at": _NULLABLE_TIME,
        "secret": {"type": "string", "description": "Only in the answer that created it."},
    },
}
_HTML = {"text/html": {"schema": {"type": "string"}}}
PATHS.update(
    {
        "/whoami": {
            "get": {
                "summary": "Who the caller's token stands for.",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["user_id", "admin"],
                            "properties": {
                                "user_id": {"type": "string"},
                                "admin": {"type": "boolean"},
                            },
                        },
                        "The caller.",
                    )
                },
            }
        },
        "/tokens": {
            "get": {
                "summary": "Every token, revoked ones too (the admin's token).",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["tokens"],
                            "properties": {"tokens": {"type": "array", "items": _ref("Token")}},
                        },
                        "The tokens, without secrets.",
                    ),
                    "403": _error("Not the admin's token."),
                },
            },
            "post": {
                "summary": "A new token for a user (the admin's token); its secret is shown once.",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["user_id"],
                                "properties": {"user_id": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(_ref("Token"), "Created, with its secret."),
                    **_errors("400"),
                    "403": _error("Not the admin's token."),
                },
            },
        },
        "/tokens/{token_id}": {
            "delete": {
                "summary": "Revoke a token (the admin's token): calls with it fail from now on.",
                "parameters": [_TOKEN_ID],
                "responses": {
                    "200": _json(_ref("Token"), "Revoked."),
                    **_errors("400"),
                    "403": _error("Not the admin's token."),
                    "404": _error("No such token."),
                },
            }
        },
    }
)

# Every route but health and this document wants a token (unless the Host runs with
# --no-auth); the core's 401 applies to all of them alike.
_UNAUTHENTICATED = _error(
    "No valid token: send `Authorization: Bearer <token>` (not needed with --no-auth)."
)
for _operations in PATHS.values():
    for _operation in _operations.values():
        if "health" in _operation.get("tags", ()):
            _operation["security"] = []
        else:
            _operation["responses"].setdefault("401", _UNAUTHENTICATED)
PATHS["/programs"]["post"]["responses"]["403"] = _error(
    "The token is another user's: it cannot create programs for this user_id."
)

# The web dashboard (ui.py): pages, not API; no token (the page asks for one).
_UI_ANSWERS = {
    "200": {"description": "The dashboard's page or one of its files.", "content": _HTML},
    "404": _error("No such file of the dashboard."),
    "503": {"description": "The dashboard is not built: run scripts/setup.sh.", "content": _HTML},
}
PATHS["/ui"] = {
    "get": {
        "summary": "Redirects to /ui/.",
        "tags": ["ui"],
        "security": [],
        "responses": {"308": {"description": "To /ui/."}},
    }
}
PATHS["/ui/{path}"] = {
    "get": {
        "summary": "The web dashboard (a single-page app; /ui/programs is the original's path).",
        "tags": ["ui"],
        "security": [],
        "parameters": [
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": _UI_ANSWERS,
    }
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Hershy REST API",
        "version": "1",
        "description": (
            "The :9000 REST API of a Hershy Host, a translation of the gRPC API "
            "(hershy.v1.ProgramService). Errors are `{error, code, message}`. "
            "Send the API token as `Authorization: Bearer <token>`."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API token (`hershy_...`), as the admin made it.",
            }
        },
    },
}
