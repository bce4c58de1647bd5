"""The `:9000` REST API: every route is a translation onto the gRPC core.

The shim holds no program logic and no registry: it talks to the core through
a real gRPC channel, like any other client, and maps answers and errors to
HTTP (errors.py is the one place statuses are mapped).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hershy.adapters.docker.port_pool import loopback_endpoint
from hershy.domain import limits
from hershy.domain.validation import cut
from hershy.entrypoints.rest import shapes, uploads
from hershy.entrypoints.rest.auth import Metadata, Principals, bearer, credentials
from hershy.entrypoints.rest.cache import ProgramCache, Seed
from hershy.entrypoints.rest.config import ConfigRoutes
from hershy.entrypoints.rest.errors import (
    ApiError,
    bad_request,
    dumps,
    error_middleware,
    forbidden,
    from_rpc_error,
    json_response,
    state_label,
)
from hershy.entrypoints.rest.fastpath import FastPath, FrontProtocol
from hershy.entrypoints.rest.proxy import (
    READ_BUFFER_BYTES,
    RECHECK_SECONDS,
    EndpointOf,
    WatcherProxy,
)
from hershy.entrypoints.rest.quotas import QuotaRoutes
from hershy.entrypoints.rest.streams import StreamPump, pump_ndjson, pump_sse, sse_event
from hershy.entrypoints.rest.tokens import TokenRoutes
from hershy.entrypoints.rest.ui import Dashboard
from hershy.service.metrics import Metrics
from hershy.v1 import program_pb2 as pb
from hershy.v1 import program_pb2_grpc as pb_grpc
from hershy.v1 import token_pb2_grpc as token_grpc

log = logging.getLogger(__name__)

SERVICE = "hershy.v1.ProgramService"
#: Same limits as the core's server: sources can be tens of MiB.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
]
#: Deadline on the shim's unary calls: the core answers them at once, this only
#: bounds a request when the core is wedged.
CALL_TIMEOUT = 30.0
#: The lines of the original's JSON log answer (`tail` overrides), as it gave.
JSON_LOG_LINES = 200
#: The most line text one JSON log answer holds (the oldest lines go first past it):
#: it is built whole in memory, unlike NDJSON, and a `tail` of millions must not
#: hold the shim's memory that every tenant shares.
JSON_LOG_MAX_BYTES = limits.MAX_JSON_LOG_BYTES
#: The states a REST stop answers with a 200 that changes nothing: the ones the core
#: refuses a stop in for having nothing to stop. (A stop in Error is the core's own:
#: it clears the error and ends Stopped.)
AT_REST = frozenset(state_label(state) for state in (pb.STATE_CREATED, pb.STATE_STOPPED))
Kind = pb.WatchProgramsResponse


@dataclass(frozen=True, slots=True)
class RestConfig:
    grpc_address: str
    http_address: str = "127.0.0.1:9000"
    #: SSE comment lines this often, so idle connections stay open through proxies.
    heartbeat_seconds: float = 15.0
    #: The longest silence of a proxied WatcherAPI response before it is cut.
    proxy_read_timeout: float = 300.0
    #: How long a DELETE waits for the program to be gone before answering 202.
    delete_wait_seconds: float = 30.0
    #: On shutdown, how long requests still running get before they are cancelled.
    shutdown_timeout: float = 2.0
    #: False when the core takes calls without tokens (--no-auth): the proxy then
    #: lets everyone through, as the core does.
    auth_enabled: bool = True
    #: The shim's own token (admin), for the proxy's view of every program.
    service_token: str | None = None
    #: How long the proxy trusts what the core said a token stands for.
    principal_ttl_seconds: float = 5.0
    #: The Host's figures, served at /metrics (admin token, unless --no-auth).
    metrics: Metrics | None = None
    #: Why the Host is not ready yet (recovery under way, Docker failing), None when it is.
    not_ready_reason: Callable[[], str | None] | None = None
    #: Registers a listener the core calls with the secret hash of each token it
    #: revokes (the Authenticator's `on_revoke`, when the shim runs in the Host's
    #: process): proxied streams of that token are cut at once.
    revocations: Callable[[Callable[[str], None]], None] | None = None
    #: The backstop: how often the proxy asks the core again about the tokens of
    #: its open streams (a revoked one's streams are cut).
    revocation_check_seconds: float = RECHECK_SECONDS
    #: Where the proxy connects for a program's address, and which addresses it may
    #: connect to at all: the runtime's own rule (`ProgramRuntime.watcher_endpoint`),
    #: given by the composition root. The default, for a shim wired up on its own, is
    #: the rule of the runtimes that publish WatcherAPIs on loopback ports (Docker, fake).
    watcher_endpoint: EndpointOf = loopback_endpoint
    #: The core's programs, read in its process (`cache.Seed`): the proxy's first view
    #: without a Watch snapshot of every program (a restart with 10,000 spent 2.8 s on it).
    seed: Seed | None = None


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class RestApi:
    """The routes and their handlers, over one gRPC channel."""

    def __init__(self, config: RestConfig, channel: grpc.aio.Channel) -> None:
        self.config = config
        self._stub: pb_grpc.ProgramServiceAsyncStub = pb_grpc.ProgramServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self.cache = ProgramCache(self._stub, bearer(config.service_token), config.seed)
        principals = None
        self.tokens: token_grpc.TokenServiceAsyncStub | None = None
        if config.auth_enabled:
            self.tokens = token_grpc.TokenServiceStub(channel)
            principals = Principals(self.tokens, config.principal_ttl_seconds)
        self._principals = principals
        self._tokens = TokenRoutes(token_grpc.TokenServiceStub(channel))
        self._dashboard = Dashboard(auth_enabled=config.auth_enabled)
        self._metrics = config.metrics
        self._proxy_series: dict[int, tuple[Any, Any]] = {}
        self.proxy = WatcherProxy(self.cache, self._stub, principals, config.watcher_endpoint)
        #: The proxy's hot path, in front of aiohttp (fastpath.py).
        self.fast = FastPath(
            self.proxy,
            self.cache,
            principals,
            config.watcher_endpoint,
            config.proxy_read_timeout,
            self._record_proxied,
        )
        self._quotas = QuotaRoutes(channel)
        self._config = ConfigRoutes(channel)
        self.uploads = uploads.Uploads()
        #: Set on shutdown: SSE and log streams end cleanly instead of being cut.
        self.closing = asyncio.Event()
        #: Where the shim listens, for `proxy_url` when a client's Host header is unusable.
        self.address = config.http_address

    def app(self) -> web.Application:
        # Bodies are read by the handlers that take them, with their own limit (uploads.py).
        app = web.Application(middlewares=[error_middleware], client_max_size=limits.MAX_BODY_BYTES)
        add = app.router.add_route
        # The proxy first: the router tries routes in order, and it is the hot path.
        # It re-reads the raw path itself (the router sees it decoded).
        add("*", "/programs/{program_id}/watcher{rest:.*}", self.proxied)
        # `/proxy/<any path>`: the original's prefix, under which `proxy_url` points.
        add("*", "/programs/{program_id}/proxy{rest:.*}", self.proxied)
        add("GET", "/healthz", self.healthz)
        add("GET", "/metrics", self.metrics)
        add("GET", "/readyz", self.readyz)
        add("GET", "/openapi.json", self.openapi)
        add("POST", "/programs", self.create)
        add("GET", "/programs", self.list_programs)
        add("GET", "/programs/{program_id}", self.get)
        add("DELETE", "/programs/{program_id}", self.delete)
        add("POST", "/programs/{program_id}/start", self.start)
        add("POST", "/programs/{program_id}/stop", self.stop)
        add("POST", "/programs/{program_id}/restart", self.restart)
        add("GET", "/programs/{program_id}/wait", self.wait)
        add("POST", "/programs/{program_id}/deploy", self.deploy)
        add("PATCH", "/programs/{program_id}", self.update)
        add("GET", "/programs/{program_id}/revisions", self.revisions)
        add("POST", "/programs/{program_id}/rollback", self.rollback)
        add("GET", "/programs/{program_id}/logs", self.logs)
        add("GET", "/programs/{program_id}/source", self.source)
        add("GET", "/programs/{program_id}/events", self.events)
        add("GET", "/events", self.events)
        self._quotas.add_to(app)
        self._config.add_to(app, lambda: self.address)
        self._tokens.register(app)
        self._dashboard.register(app)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        # Requests still running get the runner's shutdown_timeout to finish; the
        # streams that would never finish by themselves are told to end now.
        self.closing.set()
        await self.proxy.close_websockets()

    # --- helpers ------------------------------------------------------------------

    def _base(self, request: web.Request) -> str:
        return shapes.base_url(request, self.address)

    def _program(
        self, request: web.Request, program: pb.Program, status: int = 200
    ) -> web.Response:
        return json_response(shapes.program_json(program, self._base(request)), status=status)

    @staticmethod
    def _name(request: web.Request) -> str:
        return shapes.program_name(request.match_info["program_id"])

    # --- health and the API description -----------------------------------------

    async def proxied(self, request: web.Request) -> web.StreamResponse:
        """The proxy, counted and timed by status (to the response's headers)."""
        started = time.perf_counter()
        status = 500
        try:
            response = await self.proxy.handle(request)
            status = response.status
            return response
        except (web.HTTPException, ApiError) as error:
            status = error.status
            raise
        finally:
            self._record_proxied(status, time.perf_counter() - started)

    def _record_proxied(self, status: int, seconds: float) -> None:
        if self._metrics is not None:
            series = self._proxy_series.get(status)
            if series is None:  # a label lookup per request costs; a status's pair, once
                label = str(status)
                series = (
                    self._metrics.proxy_requests.labels(label),
                    (self._metrics.proxy_seconds.labels(label)),
                )
                self._proxy_series[status] = series
            series[0].inc()
            series[1].observe(seconds)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus' text format; the admin's token (the figures cover every user)."""
        if self._principals is not None:
            caller = await self._principals.resolve(request)
            if not caller.admin:
                raise forbidden("only the admin's token may read /metrics")
        if self._metrics is None:
            raise web.HTTPNotFound(text="no metrics in this process")
        return web.Response(
            body=self._metrics.exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready when the core's health check says SERVING and the proxy's view is current."""
        try:
            answer = await self._health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=1.0
            )
            serving = answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError as error:
            log.debug("readiness: the core's health check failed: %s", error.code())
            serving = False
        if not serving:
            raise ApiError(503, "CORE_NOT_SERVING", "the Host core is not serving")
        reason = self.config.not_ready_reason() if self.config.not_ready_reason else None
        if reason is not None:
            raise ApiError(503, "RECOVERING", f"the Host is recovering: {reason}")
        if not self.cache.synced:
            raise ApiError(503, "PROXY_NOT_SYNCED", "the proxy's view of programs is not current")
        return json_response({"status": "ready"})

    async def openapi(self, request: web.Request) -> web.Response:
        # Imported on the first request: an idle Host need not hold the document.
        from hershy.entrypoints.rest import openapi

        return json_response(openapi.DOCUMENT)

    # --- programs ------------------------------------------------------------------

    def _lifecycle(
        self, request: web.Request, program: pb.Program, message: str, status: int = 200
    ) -> web.Response:
        body = shapes.lifecycle_json(program, self._base(request), message)
        return json_response(body, status=status)

    async def create(self, request: web.Request) -> web.Response:
        body = await self.uploads.create_request(request)
        program = await self._stub.CreateProgram(
            body.request, metadata=credentials(request), timeout=CALL_TIMEOUT * 2
        )
        response = self._program(request, program, status=201)
        response.headers["Location"] = f"/programs/{program.id}"
        warning = uploads.ignored_keys_warning(body.ignored_keys)
        if warning is not None:
            response.headers["Warning"] = warning
        return response

    async def list_programs(self, request: web.Request) -> web.Response:
        page_size = shapes.parse_int(request, "page_size", 0, 0, limits.MAX_PAGE_SIZE)
        answer = await self._stub.ListPrograms(
            pb.ListProgramsRequest(
                page_size=page_size or 0,
                page_token=request.query.get("page_token", ""),
                user_id=request.query.get("user_id", ""),
            ),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        base = self._base(request)
        return json_response(
            {
                "programs": [shapes.program_json(program, base) for program in answer.programs],
                "count": answer.total_size,
                "next_page_token": answer.next_page_token,
            }
        )

    async def get(self, request: web.Request) -> web.Response:
        message = pb.GetProgramRequest(name=self._name(request))
        answer = await self._stub.GetProgram(
            message, metadata=credentials(request), timeout=CALL_TIMEOUT
        )
        return self._program(request, answer)

    async def delete(self, request: web.Request) -> web.Response:
        """Deletes and waits until the program is gone: 200 once Deleted, 202 if still going."""
        name = self._name(request)
        program = await self._stub.DeleteProgram(
            pb.DeleteProgramRequest(name=name), metadata=credentials(request), timeout=CALL_TIMEOUT
        )
        program = await self._until_deleted(program, credentials(request))
        if program.state == pb.STATE_DELETED:
            return self._lifecycle(request, program, "program deleted")
        return self._lifecycle(request, program, "program is being deleted", status=202)

    async def _until_deleted(self, program: pb.Program, metadata: Metadata) -> pb.Program:
        """The program's last change once DELETED, or as it is when the wait runs out."""
        watch = pb.WatchProgramsRequest(name=program.name, resume_revision=program.revision)
        call = self._stub.WatchPrograms(watch, metadata=metadata)
        try:
            async with asyncio.timeout(self.config.delete_wait_seconds):
                async for message in call:
                    if message.type == Kind.TYPE_RESYNC:
                        continue
                    if message.HasField("program"):
                        program = message.program
                    if program.state == pb.STATE_DELETED:
                        return program
                    if program.state == pb.STATE_DELETING and program.error_message:
                        raise ApiError(
                            500,
                            "DELETE_FAILED",
                            f"{program.error_message}; DELETE again to retry",
                            state=state_label(program.state),
                        )
        except TimeoutError:
            pass
        except grpc.aio.AioRpcError as error:
            # E.g. the core is shutting down: the delete was accepted all the same.
            log.info("waiting for %s to be deleted: %s", program.name, error.code())
        finally:
            call.cancel()
        return program

    async def start(self, request: web.Request) -> web.Response:
        message = pb.StartProgramRequest(name=self._name(request))
        answer = await self._stub.StartProgram(
            message, metadata=credentials(request), timeout=CALL_TIMEOUT
        )
        return self._lifecycle(request, answer, "program starting")

    async def stop(self, request: web.Request) -> web.Response:
        """Stop; on a program at rest (Created, Stopped) a 200 that changes nothing.

        The original accepted a stop in any state, and its scripts stop before
        they delete or redeploy. Only the REST shim says so: the core still
        answers FAILED_PRECONDITION, which gRPC clients rely on.
        """
        name = self._name(request)
        try:
            answer = await self._stub.StopProgram(
                pb.StopProgramRequest(name=name),
                metadata=credentials(request),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            refused_at_rest = (
                error.code() == grpc.StatusCode.FAILED_PRECONDITION
                and from_rpc_error(error).extra.get("state") in AT_REST
            )
            if not refused_at_rest:
                raise
            program = await self._stub.GetProgram(
                pb.GetProgramRequest(name=name), metadata=credentials(request), timeout=CALL_TIMEOUT
            )
            state = state_label(program.state)
            if state not in AT_REST:  # it started meanwhile: the refusal no longer holds
                raise
            return self._lifecycle(request, program, f"program is {state}: nothing to stop")
        return self._lifecycle(request, answer, "program stopping")

    async def restart(self, request: web.Request) -> web.Response:
        message = pb.RestartProgramRequest(name=self._name(request))
        answer = await self._stub.RestartProgram(
            message, metadata=credentials(request), timeout=CALL_TIMEOUT
        )
        return self._lifecycle(request, answer, "program restarting")

    # --- new revisions in place ------------------------------------------------------

    async def deploy(self, request: web.Request) -> web.Response:
        """A new revision from new source: the body of POST /programs (its user_id is ignored)."""
        body = await self.uploads.create_request(request)
        create = body.request
        message = pb.DeployProgramRequest(
            name=self._name(request), dockerfile=create.dockerfile, src_files=create.src_files
        )
        if create.HasField("resources"):
            message.resources.CopyFrom(create.resources)
        answer = await self._stub.DeployProgram(
            message, metadata=credentials(request), timeout=CALL_TIMEOUT * 2
        )
        return self._lifecycle(request, answer, "new revision rolling out", status=202)

    async def update(self, request: web.Request) -> web.Response:
        body = await uploads.read_body(request)
        message = uploads.update_request(
            self._name(request), body, request.query.get("update_mask", "")
        )
        answer = await self._stub.UpdateProgram(
            message, metadata=credentials(request), timeout=CALL_TIMEOUT
        )
        return self._lifecycle(request, answer, "new revision rolling out", status=202)

    async def revisions(self, request: web.Request) -> web.Response:
        answer = await self._stub.ListProgramRevisions(
            pb.ListProgramRevisionsRequest(name=self._name(request)),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return json_response({"revisions": [shapes.revision_json(r) for r in answer.revisions]})

    async def rollback(self, request: web.Request) -> web.Response:
        """`?revision=N` (default: the one before the current)."""
        number = shapes.parse_int(request, "revision", 0, 0, 2**62)
        answer = await self._stub.RollbackProgram(
            pb.RollbackProgramRequest(name=self._name(request), revision_number=number or 0),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        return self._lifecycle(request, answer, "rollback rolling out", status=202)

    async def wait(self, request: web.Request) -> web.Response:
        name = self._name(request)
        state = shapes.parse_state(request.query.get("state", "ready"))
        seconds = shapes.parse_seconds(
            request, "timeout", limits.DEFAULT_WAIT_SECONDS, limits.MAX_WAIT_SECONDS
        )
        timeout = Duration()
        timeout.FromNanoseconds(round(seconds * 1e9))
        message = pb.WaitProgramRequest(name=name, state=state, timeout=timeout)
        answer = await self._stub.WaitProgram(
            message, metadata=credentials(request), timeout=seconds + CALL_TIMEOUT
        )
        return self._program(request, answer)

    async def source(self, request: web.Request) -> web.Response:
        name = self._name(request)
        answer = await self._stub.GetProgramSource(
            pb.GetProgramSourceRequest(name=name),
            metadata=credentials(request),
            timeout=CALL_TIMEOUT,
        )
        program_id = request.match_info["program_id"]
        return json_response(shapes.source_json(answer, program_id, shapes.now_rfc3339()))

    # --- streams --------------------------------------------------------------------

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """The original's JSON answer by default; NDJSON on request, and for `follow`.

        See `shapes.logs_format` for how the answer's format is chosen.
        """
        follow = shapes.parse_bool(request, "follow")
        ndjson = shapes.logs_format(request, follow) == shapes.LogsFormat.NDJSON
        message = pb.ReadProgramLogsRequest(
            name=self._name(request),
            follow=follow,
            streams=shapes.parse_log_streams(",".join(request.query.getall("stream", []))),
        )
        tail = shapes.parse_int(request, "tail", None if ndjson else JSON_LOG_LINES, 0, 2**31 - 1)
        if tail is not None:
            message.tail = tail
        if not ndjson:
            return await self._logs_json(request, message)
        call = self._stub.ReadProgramLogs(message, metadata=credentials(request))
        pump = StreamPump(call, self.closing)
        try:
            return await pump_ndjson(request, pump, lambda entry: dumps(shapes.log_json(entry)))
        finally:
            pump.close()

    async def _logs_json(
        self, request: web.Request, message: pb.ReadProgramLogsRequest
    ) -> web.Response:
        """`{program_id, container_id, logs, timestamp}`: the last lines as one string."""
        metadata = credentials(request)
        program = await self._stub.GetProgram(
            pb.GetProgramRequest(name=message.name), metadata=metadata, timeout=CALL_TIMEOUT
        )
        call = self._stub.ReadProgramLogs(message, metadata=metadata, timeout=CALL_TIMEOUT)
        entries: collections.deque[pb.LogEntry] = collections.deque()
        size = 0
        truncated = False
        async for entry in call:
            entries.append(entry)
            size += len(entry.line) + 1
            while size > JSON_LOG_MAX_BYTES:
                size -= len(entries.popleft().line) + 1
                truncated = True
        body: dict[str, object] = {
            "program_id": program.id,
            "container_id": program.container_id,
            "logs": shapes.log_text(list(entries)),
            "timestamp": shapes.now_rfc3339(),
            "lines": len(entries),
        }
        if truncated:
            body["truncated"] = True
        return json_response(body)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Watch as Server-Sent Events: `/events` for all programs, or one program's."""
        program_id = request.match_info.get("program_id")
        message = pb.WatchProgramsRequest(
            name=shapes.program_name(program_id) if program_id is not None else ""
        )
        resume = _resume_revision(request)
        if resume is not None:
            message.resume_revision = resume
        base = self._base(request)

        def render(answer: pb.WatchProgramsResponse) -> str:
            kind = Kind.Type.Name(answer.type).removeprefix("TYPE_").lower()
            match answer.type:
                case Kind.TYPE_SNAPSHOT:
                    # No id: a snapshot is in creation order, not revision order, so
                    # resuming from the middle of one would skip changes.
                    return sse_event(kind, shapes.program_json(answer.program, base))
                case Kind.TYPE_SYNCED:
                    return sse_event(kind, {"revision": answer.revision}, answer.revision)
                case Kind.TYPE_RESYNC:
                    return sse_event(kind, {})
                case _:
                    data = shapes.program_json(answer.program, base)
                    return sse_event(kind, data, answer.revision)

        call = self._stub.WatchPrograms(message, metadata=credentials(request))
        pump = StreamPump(call, self.closing)
        try:
            return await pump_sse(request, pump, render, self.config.heartbeat_seconds)
        finally:
            pump.close()


def _resume_revision(request: web.Request) -> int | None:
    """`Last-Event-ID` (what a reconnecting EventSource sends) wins over `?resume_revision=`."""
    for field, raw in (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("resume_revision", request.query.get("resume_revision")),
    ):
        if raw is None or raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            raise bad_request(field, f"{cut(raw)} is not a revision (an integer)") from None
        if not 0 <= value < 2**63:
            raise bad_request(field, "must be between 0 and 2^63-1")
        return value
    return None


class RestServer:
    """The shim's lifetime: a gRPC channel, the program cache, the HTTP site."""

    def __init__(self, config: RestConfig) -> None:
        self.config = config
        self.address = config.http_address
        self._channel: grpc.aio.Channel | None = None
        self._runner: web.AppRunner | None = None
        self._api: RestApi | None = None
        self._cache_task: asyncio.Task[None] | None = None
        self._recheck_task: asyncio.Task[None] | None = None
        self._listener: asyncio.Server | None = None
        self._fronts: weakref.WeakSet[FrontProtocol] = weakref.WeakSet()

    async def start(self, sync_timeout: float = 5.0) -> None:
        """Listen, and give the proxy's cache a moment to sync before serving."""
        self._channel = grpc.aio.insecure_channel(self.config.grpc_address, options=CHANNEL_OPTIONS)
        self._api = api = RestApi(self.config, self._channel)
        await api.proxy.start(self.config.proxy_read_timeout)
        self._cache_task = asyncio.create_task(api.cache.run(), name="rest-program-cache")
        if api.tokens is not None:
            if self.config.revocations is not None:
                self.config.revocations(api.proxy.revoked)
            self._recheck_task = asyncio.create_task(
                api.proxy.recheck_forever(api.tokens, self.config.revocation_check_seconds),
                name="rest-proxy-token-recheck",
            )
        self._runner = web.AppRunner(
            api.app(),
            # No access log: one line per request would cost more than the proxy itself.
            access_log=None,
            shutdown_timeout=self.config.shutdown_timeout,
            # A body left unread (a 413, say) closes the connection instead of being
            # read and thrown away for up to 10 s: that is what refusing it means.
            lingering_time=0,
            # Proxied uploads are read in bigger pieces (see proxy.READ_BUFFER_BYTES).
            read_bufsize=READ_BUFFER_BYTES,
        )
        try:
            await self._runner.setup()
            host, port = split_address(self.config.http_address)
            server = self._runner.server
            assert server is not None
            fronts = self._fronts
            # Every connection starts with the proxy's fast path, which hands it to
            # aiohttp's handler (`server`) at the first request it does not serve itself.
            self._listener = await asyncio.get_running_loop().create_server(
                lambda: FrontProtocol(api.fast, server, fronts), host, port, reuse_address=True
            )
        except BaseException:
            await self.stop()
            raise
        bound = self._listener.sockets[0].getsockname()
        self.address = api.address = f"{self.config.http_address.rpartition(':')[0]}:{bound[1]}"
        if not await api.cache.wait_synced(sync_timeout):
            log.warning("the proxy's program cache did not sync within %s s", sync_timeout)

    async def stop(self) -> None:
        """Streams end, running requests get a short grace, then everything closes."""
        if self._listener is not None:
            self._listener.close()
        # The fast path's connections (aiohttp's shutdown knows only those handed to it):
        # idle ones close now; running requests get the same grace as aiohttp's.
        running = [front.busy for front in self._fronts if front.busy is not None]
        for front in [front for front in self._fronts if front.busy is None]:
            front.close()

        async def fast_requests_finish() -> None:
            if running:
                await asyncio.wait(running, timeout=self.config.shutdown_timeout)

        async def aiohttp_finishes() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        await asyncio.gather(aiohttp_finishes(), fast_requests_finish())
        for front in list(self._fronts):
            front.close()
        if self._api is not None:
            self._api.fast.pool.close()
        for task in (self._cache_task, self._recheck_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._api is not None:
            await self._api.proxy.close()
            self._api.uploads.close()
        if self._channel is not None:
            await self._channel.close()
