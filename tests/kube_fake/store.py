"""Objects, resourceVersions and the event history behind the fake API server.

Plain synchronous code under one lock, so tests may call it from any thread; watchers are
told about each committed event through a callback run under that lock, which keeps every
watcher's view in commit order.

Faithful to the real server where clients notice:
- one global resourceVersion, an increasing integer sent as a string; a write bumps it, an
  update that changes nothing does not (and emits no event);
- uid, creationTimestamp and generation (bumped when anything but metadata/status changes);
- PUT and merge patches with a metadata.resourceVersion that is not the stored one get 409;
- a DELETED event carries the object's last state with the deletion's resourceVersion.

Simplified: deletion is immediate (no finalizers or grace period), namespaces need not exist,
status may be written through the main resource, and a CustomResourceDefinition is
Established the moment it is created (its kinds are then served).
"""

from __future__ import annotations

import copy
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .resources import ResourceTable, ResourceType
from .selectors import Predicate

__all__ = ["Event", "KubeError", "Store", "Subscription", "filter_event"]

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped kinds
Gvr = tuple[str, str, str]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class KubeError(Exception):
    """A failure the server answers with a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details or {},
            "code": self.code,
        }


def _details(rt: ResourceType, name: str) -> Obj:
    return {"name": name, "group": rt.group, "kind": rt.plural}


def not_found(rt: ResourceType, name: str) -> KubeError:
    return KubeError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def conflict(rt: ResourceType, name: str) -> KubeError:
    msg = (
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    return KubeError(409, "Conflict", msg, _details(rt, name))


def invalid(rt: ResourceType, name: str, why: str) -> KubeError:
    return KubeError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {why}', _details(rt, name))


def bad_request(message: str) -> KubeError:
    return KubeError(400, "BadRequest", message)


@dataclass(frozen=True)
class Event:
    """A committed change. `obj` is the state after it (for DELETED: the last state, with the
    deletion's resourceVersion); `prev` the state before it (None for ADDED)."""

    type: str  # ADDED | MODIFIED | DELETED
    rv: int
    gvr: Gvr
    obj: Obj
    prev: Obj | None


def filter_event(event: Event, matches: Predicate) -> tuple[str, Obj] | None:
    """What a watcher with this filter sees, as the real server's cacher decides it: an object
    that starts matching arrives as ADDED, one that stops matching as DELETED (its previous
    content at the event's resourceVersion)."""
    now = event.type != "DELETED" and matches(event.obj)
    before = event.prev is not None and matches(event.prev)
    if now:
        return ("MODIFIED" if before else "ADDED"), event.obj
    if before:
        assert event.prev is not None
        return "DELETED", _with_rv(event.prev, event.rv)
    return None


@dataclass(frozen=True)
class Subscription:
    initial: list[Event]  # replayed history, or synthetic ADDED events for current objects
    rv: int  # the resourceVersion the watcher is at once `initial` is sent
    close: Callable[[], None]


def _with_rv(obj: Obj, rv: int) -> Obj:
    out = dict(obj)
    out["metadata"] = {**obj.get("metadata", {}), "resourceVersion": str(rv)}
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _payload(obj: Obj) -> Obj:
    """What decides whether `generation` moves: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """All objects of all kinds, keyed by (group, version, plural) then (namespace, name)."""

    def __init__(self, table: ResourceTable, history_limit: int = 1000) -> None:
        self.table = table
        self._lock = threading.RLock()
        self._objects: dict[Gvr, dict[Key, Obj]] = {}
        self._rv = 1
        self._history: deque[Event] = deque()
        self._history_limit = history_limit
        self._floor = 0  # events at or below this resourceVersion are forgotten
        self._subscribers: dict[Gvr, list[Callable[[Event], None]]] = {}

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    # --- reads ---

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        with self._lock:
            obj = self._bucket(rt).get(self._key(rt, namespace, name))
            if obj is None:
                raise not_found(rt, name)
            return copy.deepcopy(obj)

    def list(self, rt: ResourceType, matches: Predicate) -> tuple[list[Obj], int]:
        with self._lock:
            items = [o for _, o in sorted(self._bucket(rt).items()) if matches(o)]
            return copy.deepcopy(items), self._rv

    def subscribe(
        self, rt: ResourceType, since: int | None, callback: Callable[[Event], None]
    ) -> Subscription:
        """Start delivering `rt`'s events to `callback`. `since=None` starts with synthetic
        ADDED events for the current objects; otherwise the history after `since` is
        replayed, or 410 Expired raised when that history is gone."""
        gvr = _gvr(rt)
        with self._lock:
            if since is None:
                initial = [
                    Event("ADDED", int(o["metadata"]["resourceVersion"]), gvr, o, None)
                    for _, o in sorted(self._bucket(rt).items())
                ]
            elif since < self._floor:
                msg = f"too old resource version: {since} ({self._floor + 1})"
                raise KubeError(410, "Expired", msg)
            else:
                initial = [e for e in self._history if e.rv > since and e.gvr == gvr]
            callbacks = self._subscribers.setdefault(gvr, [])
            callbacks.append(callback)
            rv = self._rv

        def close() -> None:
            with self._lock:
                if callback in callbacks:
                    callbacks.remove(callback)

        return Subscription(initial, rv, close)

    # --- writes ---

    def create(self, rt: ResourceType, namespace: str, obj: Obj, *, dry_run: bool = False) -> Obj:
        obj = self._checked(rt, namespace, obj)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta.get("name")
        if not name:
            raise invalid(rt, "", "metadata.name: Required value: name or generateName is required")
        with self._lock:
            key = self._key(rt, namespace, name)
            if key in self._bucket(rt):
                msg = f'{rt.qualified} "{name}" already exists'
                raise KubeError(409, "AlreadyExists", msg, _details(rt, name))
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            meta.pop("resourceVersion", None)
            if rt.kind == "CustomResourceDefinition":
                obj = self._establish(obj, dry_run)
            return self._commit(rt, key, None, obj, dry_run)

    def replace(
        self, rt: ResourceType, namespace: str, name: str, obj: Obj, *, dry_run: bool = False
    ) -> Obj:
        obj = self._checked(rt, namespace, obj)
        if obj["metadata"].get("name") != name:
            raise bad_request("the name of the object does not match the name on the URL")
        with self._lock:
            old = self._bucket(rt).get(self._key(rt, namespace, name))
            if old is None:
                raise not_found(rt, name)
            wanted = obj["metadata"].get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            return self._update(rt, old, obj, dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        body: Any,
        *,
        field_manager: str = "",
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Apply a PATCH body; returns (object, created). Server-side apply creates a missing
        object; every other patch type needs one."""
        if content_type == APPLY_PATCH and not field_manager:
            raise invalid(rt, name, "fieldManager: Required value: is required for apply patch")
        if content_type in (MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH) and not isinstance(
            body, dict
        ):
            raise bad_request("a merge patch or apply body must be an object")
        with self._lock:
            old = self._bucket(rt).get(self._key(rt, namespace, name))
            if old is None and content_type == APPLY_PATCH:
                obj = {**body, "metadata": {**body.get("metadata", {}), "name": name}}
                return self.create(rt, namespace, obj, dry_run=dry_run), True
            if old is None:
                raise not_found(rt, name)
            if content_type == JSON_PATCH:
                try:
                    new = json_patch(old, body)
                except PatchError as exc:
                    raise invalid(rt, name, str(exc)) from exc
            elif content_type in (MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH):
                wanted = (body.get("metadata") or {}).get("resourceVersion")
                if wanted and wanted != old["metadata"]["resourceVersion"]:
                    raise conflict(rt, name)
                if content_type == STRATEGIC_PATCH:
                    new = strategic_merge_patch(old, body)
                else:
                    new = merge_patch(old, body)
            else:
                msg = f"the body of the request was in an unknown format: {content_type}"
                raise KubeError(415, "UnsupportedMediaType", msg)
            new = self._checked(rt, namespace, new)
            new["metadata"]["name"] = name  # identity cannot be patched away
            return self._update(rt, old, new, dry_run), False

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        preconditions: Obj | None = None,
        dry_run: bool = False,
    ) -> Obj:
        with self._lock:
            key = self._key(rt, namespace, name)
            old = self._bucket(rt).get(key)
            if old is None:
                raise not_found(rt, name)
            pre = preconditions or {}
            meta = old["metadata"]
            if (pre.get("uid") and pre["uid"] != meta["uid"]) or (
                pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]
            ):
                raise conflict(rt, name)
            return self._commit(rt, key, old, None, dry_run)

    def apply(self, rt: ResourceType, obj: Obj) -> Obj:
        """Create or replace regardless of resourceVersion, as a test arranging state would."""
        meta = obj.get("metadata", {})
        namespace = (meta.get("namespace") or "default") if rt.namespaced else ""
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
        with self._lock:
            if self._key(rt, namespace, meta.get("name", "")) in self._bucket(rt):
                return self.replace(rt, namespace, meta["name"], obj)
            return self.create(rt, namespace, obj)

    def compact(self) -> None:
        """Forget the event history: every resourceVersion before now is too old to watch from."""
        with self._lock:
            self._history.clear()
            self._floor = self._rv

    # --- internals ---

    def _bucket(self, rt: ResourceType) -> dict[Key, Obj]:
        return self._objects.setdefault(_gvr(rt), {})

    @staticmethod
    def _key(rt: ResourceType, namespace: str, name: str) -> Key:
        return (namespace if rt.namespaced else "", name)

    @staticmethod
    def _checked(rt: ResourceType, namespace: str, obj: Any) -> Obj:
        """A private copy of a request body with apiVersion, kind and namespace filled in."""
        if not isinstance(obj, dict):
            raise bad_request("the request body must be a JSON object")
        out: Obj = copy.deepcopy(obj)
        for field, want in (("apiVersion", rt.api_version), ("kind", rt.kind)):
            if out.setdefault(field, want) != want:
                raise bad_request(
                    f"the {field} in the data ({out[field]}) does not match the "
                    f"expected {field} ({want})"
                )
        meta = out.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.setdefault("namespace", namespace) != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
        else:
            meta.pop("namespace", None)
        return out

    def _update(self, rt: ResourceType, old: Obj, new: Obj, dry_run: bool) -> Obj:
        old_meta, meta = old["metadata"], new["metadata"]
        for field in ("uid", "creationTimestamp"):
            meta[field] = old_meta[field]
        meta["generation"] = old_meta.get("generation", 1) + (_payload(old) != _payload(new))
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if rt.kind == "CustomResourceDefinition":
            new = self._establish(new, dry_run)
        if new == old:  # a no-op write: the real server skips it, so no new version or event
            return copy.deepcopy(old)
        return self._commit(
            rt, self._key(rt, meta.get("namespace", ""), meta["name"]), old, new, dry_run
        )

    def _commit(
        self, rt: ResourceType, key: Key, old: Obj | None, new: Obj | None, dry_run: bool
    ) -> Obj:
        """Store `new` (or delete when None) at the next resourceVersion and tell watchers."""
        if dry_run:
            return copy.deepcopy(new if new is not None else old)  # type: ignore[arg-type]
        self._rv += 1
        gvr = _gvr(rt)
        if new is None:
            assert old is not None
            del self._bucket(rt)[key]
            event = Event("DELETED", self._rv, gvr, _with_rv(old, self._rv), old)
        else:
            new = _with_rv(new, self._rv)
            self._bucket(rt)[key] = new
            event = Event("MODIFIED" if old else "ADDED", self._rv, gvr, new, old)
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._floor = self._history.popleft().rv
        for callback in list(self._subscribers.get(gvr, ())):
            callback(event)
        return copy.deepcopy(event.obj)

    def _establish(self, crd: Obj, dry_run: bool) -> Obj:
        """Serve a CRD's kinds at once and report it Established, as the real server soon does."""
        spec, names = crd.get("spec", {}), crd.get("spec", {}).get("names", {})
        served = [v["name"] for v in spec.get("versions", []) if v.get("served", True)]
        if not dry_run:
            for version in served:
                self.table.register(
                    ResourceType(
                        spec.get("group", ""),
                        version,
                        names.get("plural", ""),
                        names.get("kind", ""),
                        spec.get("scope", "Namespaced") == "Namespaced",
                        names.get("singular", ""),
                        tuple(names.get("shortNames", ())),
                    )
                )
        since = crd["metadata"]["creationTimestamp"]  # not now(): re-applying is a no-op
        conditions = [
            {"type": t, "status": "True", "reason": r, "lastTransitionTime": since}
            for t, r in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))
        ]
        status = {"conditions": conditions, "acceptedNames": names, "storedVersions": served[:1]}
        return {**crd, "status": status}


def _gvr(rt: ResourceType) -> Gvr:
    return (rt.group, rt.version, rt.plural)
