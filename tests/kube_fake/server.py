"""A fake Kubernetes API server speaking the real REST list/watch protocol over HTTP.

    async with FakeKubeAPI() as api:            # inside an asyncio test
        api.write_kubeconfig(tmp_path / "kubeconfig")
        api.apply(pod("p1", "default", "10.0.0.1", {"app": "vllm"}))
        await api.wait_for_watchers("/pods")

    api = FakeKubeAPI().start_in_thread()        # from sync code; epp may run as a subprocess
    ...
    api.stop()

Every verb a client such as lightkube, client-go or Helm uses is served for any kind in
`resources.py`: get, list, watch, create, update (PUT), patch, delete, deletecollection.
Errors are `Status` objects with the real server's reasons and messages, sent with the exact
Content-Type `application/json` (lightkube only turns an error into `ApiError` on that).

Watch: chunked newline-delimited JSON events. `resourceVersion` absent or "0" starts with
synthetic ADDED events; `resourceVersion=N` replays the history after N; a version older than
the retained history gets HTTP 200 and one ERROR event carrying a 410 Expired `Status`, then
the stream ends, as the real server does. Label/field selectors apply per watcher, with the
real transitions (an object that stops matching arrives as DELETED, one that starts as ADDED).

How lightkube 1.0.1 (`AsyncClient.watch`) reports these:
- 410 Expired: the ERROR event raises `lightkube.ApiError` from the `async for`, with
  `e.status.code == 410` and `e.status.reason == "Expired"` (with the default
  `on_error=on_error_raise`; `on_error_retry` instead restarts the watch without a
  resourceVersion, i.e. with synthetic ADDED events for every current object).
- `drop_watches()` and `set_available(False)`: the connection closes mid-stream, which raises
  `httpx2.RemoteProtocolError` (lightkube 1.0 uses the `httpx2` fork, so this is not an
  `httpx.HTTPError`; catch `httpx2.TransportError`). With `on_error_retry` lightkube
  re-opens the watch from the last resourceVersion it saw.
- `end_watches()` (a clean end, as on `timeoutSeconds`): lightkube re-opens the watch from
  the last resourceVersion it saw, silently, whatever `on_error` says.

Requests while `set_available(False)` get their connection closed before any response:
`httpx2.RemoteProtocolError` ("Server disconnected without sending a response") in lightkube,
EOF in client-go.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from aiohttp import web

from . import discovery
from .resources import BUILTIN_RESOURCES, ResourceTable, ResourceType
from .store import APPLY_PATCH, KubeError, Store, bad_request
from .watch import JSON_HEADERS, Watches, hang_up, request_filter, truthy

__all__ = ["FakeKubeAPI", "SeenRequest"]

Obj = dict[str, Any]
Objs = list[Obj]

_NOT_FOUND = KubeError(404, "NotFound", "the server could not find the requested resource")
_METHOD_NOT_ALLOWED = KubeError(
    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
)


class SeenRequest(NamedTuple):
    """One request the server received, for assertions."""

    method: str
    path: str
    query: dict[str, str]


def _json(obj: Obj, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, headers=JSON_HEADERS)


class FakeKubeAPI:
    """The fake server, its store and its fault switches. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_limit: int = 1000,
        bookmark_interval_s: float = 1.0,
        resources: tuple[ResourceType, ...] = BUILTIN_RESOURCES,
    ) -> None:
        self.table = ResourceTable(resources)
        self.store = Store(self.table, history_limit)
        self.requests: list[SeenRequest] = []
        self._host, self._port = host, port
        self._available = True
        self._watches = Watches(self.store, bookmark_interval_s)  # streams open right now
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the fake API server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a watch handler learns at once that its client went away.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is None:
            return
        self.end_watches()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeKubeAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start_in_thread(self) -> FakeKubeAPI:
        """Serve from a daemon thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._stopping = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            try:
                await self.start()
            except Exception as exc:  # handed to the caller, who is waiting on `ready`
                failure.append(exc)
                return
            finally:
                ready.set()
            await self._stopping.wait()
            await self.close()

        self._thread = threading.Thread(
            target=asyncio.run, args=(serve(),), name="fake-kube-api", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop a server started with `start_in_thread` and wait for its thread."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = self._loop = self._stopping = None

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig without auth whose current context points at this server."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # --- state, as a test would arrange it with kubectl; callable from any thread ---

    def _kind(self, api_version: str, kind: str) -> ResourceType:
        rt = self.table.by_kind(api_version, kind)
        if rt is None:
            raise KeyError(f"the fake serves no {kind} in {api_version}")
        return rt

    def register(self, rt: ResourceType) -> None:
        """Serve one more kind (as installing its CRD would)."""
        self.table.register(rt)

    def apply(self, obj: Obj) -> Obj:
        """Create or replace, whatever its resourceVersion; emits ADDED or MODIFIED."""
        return self.store.apply(self._kind(obj["apiVersion"], obj["kind"]), obj)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> Obj:
        return self.store.delete(self._kind(api_version, kind), namespace, name)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.store.get(self._kind(api_version, kind), namespace, name)
        except KubeError:
            return None

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, labels: str = ""
    ) -> Objs:
        rt = self._kind(api_version, kind)
        return self.store.list(rt, request_filter(namespace, labels, ""))[0]

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    # --- faults ---

    def compact(self) -> None:
        """Forget the event history: watching from any earlier resourceVersion gets 410."""
        self.store.compact()

    def drop_watches(self) -> None:
        """Close every open watch connection mid-stream, without the final chunk."""
        self._watches.drop_all()

    def end_watches(self) -> None:
        """End every open watch cleanly, as the real server does when `timeoutSeconds` (or its
        own limit) runs out; clients are expected to re-watch from their last version."""
        self._watches.end_all()

    def set_available(self, available: bool) -> None:
        """While unavailable, every request's connection is closed before any response (a
        client sees a network error, as when the API server restarts) and watches drop."""
        self._available = available
        if not available:
            self.drop_watches()

    def watcher_count(self, path_substring: str = "") -> int:
        """Open watches whose request path contains `path_substring`."""
        return self._watches.count(path_substring)

    async def wait_for_watchers(
        self, path_substring: str = "", n: int = 1, timeout_s: float = 10.0
    ) -> None:
        """Wait until at least `n` watches on a matching path are open."""
        deadline = time.monotonic() + timeout_s
        while self.watcher_count(path_substring) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} watches on {path_substring!r}")
            await asyncio.sleep(0.01)

    def wait_for_watchers_sync(
        self, path_substring: str = "", n: int = 1, timeout_s: float = 10.0
    ) -> None:
        """`wait_for_watchers` for sync code (the server must run in its own thread)."""
        deadline = time.monotonic() + timeout_s
        while self.watcher_count(path_substring) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} watches on {path_substring!r}")
            time.sleep(0.01)

    # --- HTTP ---

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(SeenRequest(request.method, request.path, dict(request.query)))
        if not self._available:
            hang_up(request)
            return web.Response(status=503)
        try:
            return await self._dispatch(request)
        except KubeError as exc:
            return _json(exc.status(), exc.code)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if (doc := self._discovery(path)) is not None:
            if request.method != "GET":
                raise _METHOD_NOT_ALLOWED
            return doc
        rt, namespace, name = self._route(path)
        query, method = request.query, request.method
        dry_run = "All" in query.getall("dryRun", [])
        if method == "GET" and name:
            return _json(self.store.get(rt, namespace or "", name))
        if method == "GET":
            if truthy(query.get("watch")):
                return await self._watches.serve(request, rt, namespace)
            return self._list(
                rt, namespace, query.get("labelSelector", ""), query.get("fieldSelector", "")
            )
        if method == "POST" and not name and (namespace or not rt.namespaced):
            body = await _body(request)
            return _json(self.store.create(rt, namespace or "", body, dry_run=dry_run), 201)
        if method == "PUT" and name:
            body = await _body(request)
            return _json(self.store.replace(rt, namespace or "", name, body, dry_run=dry_run))
        if method == "PATCH" and name:
            obj, created = self.store.patch(
                rt,
                namespace or "",
                name,
                request.content_type,
                await _body(request),
                field_manager=query.get("fieldManager", ""),
                dry_run=dry_run,
            )
            return _json(obj, 201 if created else 200)
        if method == "DELETE" and name:
            options = await _body(request) if request.can_read_body else None  # DeleteOptions
            pre = options.get("preconditions") if isinstance(options, dict) else None
            return _json(
                self.store.delete(rt, namespace or "", name, dry_run=dry_run, preconditions=pre)
            )
        if method == "DELETE":
            return self._delete_collection(rt, namespace, query.get("labelSelector", ""))
        raise _METHOD_NOT_ALLOWED

    def _discovery(self, path: str) -> web.Response | None:
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(discovery.version())
        if path == "/api":
            return _json(discovery.api_versions(f"{self._host}:{self.port}"))
        if path == "/apis":
            return _json(discovery.api_groups(self.table))
        if path == "/openapi/v3":
            return _json(discovery.openapi_v3_root(self.table))
        parts = path.strip("/").split("/")
        if parts[:2] == ["openapi", "v3"] and len(parts) in (4, 5):
            group, version = ("", parts[3]) if parts[2] == "api" else (parts[3], parts[4])
            if (doc := discovery.openapi_v3_group_version(self.table, group, version)) is None:
                raise _NOT_FOUND
            return _json(doc)
        if parts[0] == "apis" and len(parts) == 2:
            versions = self.table.groups().get(parts[1])
            if not versions:
                raise _NOT_FOUND
            return _json(discovery.api_group(parts[1], versions))
        if parts == ["api", "v1"] or (parts[0] == "apis" and len(parts) == 3):
            group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
            doc = discovery.api_resources(self.table, group, version)
            if doc is None:
                raise _NOT_FOUND
            return _json(doc)
        return None

    def _route(self, path: str) -> tuple[ResourceType, str | None, str | None]:
        """`/api/v1[/namespaces/{ns}]/{plural}[/{name}]` or the `/apis/{group}/{version}` form."""
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _NOT_FOUND
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        rt = self.table.by_path(group, version, rest[0]) if len(rest) <= 2 else None
        name = rest[1] if len(rest) == 2 else None
        if rt is None or (namespace is not None and not rt.namespaced):
            raise _NOT_FOUND
        if rt.namespaced and namespace is None and name is not None:
            raise _NOT_FOUND
        return rt, namespace, name

    def _list(
        self, rt: ResourceType, namespace: str | None, labels: str, fields: str
    ) -> web.Response:
        items, rv = self.store.list(rt, request_filter(namespace, labels, fields))
        if rt.builtin:  # the real server leaves these out of a built-in kind's list items
            items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        return _json(
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            }
        )

    def _delete_collection(
        self, rt: ResourceType, namespace: str | None, labels: str
    ) -> web.Response:
        items, _ = self.store.list(rt, request_filter(namespace, labels, ""))
        deleted = []
        for obj in items:
            meta = obj["metadata"]
            try:
                deleted.append(self.store.delete(rt, meta.get("namespace", ""), meta["name"]))
            except KubeError:  # deleted meanwhile
                continue
        return _json(
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.resource_version)},
                "items": deleted,
            }
        )


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if "protobuf" in request.content_type:
        raise KubeError(415, "UnsupportedMediaType", "the fake only speaks JSON and YAML")
    try:
        if request.content_type == APPLY_PATCH or request.content_type.endswith("yaml"):
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise bad_request(f"the request body is not valid: {exc}") from exc
