"""A local, stateful fake of the Scaleway HTTP API, for the real ``scaleway`` SDK.

It serves the endpoints our adapter uses, with Scaleway's shapes: Instance API v1 (servers,
actions, user data, flexible IPs, instance volumes, products/servers and availability, with
``page``/``per_page`` paging and ``X-Total-Count``), Block Storage v1 (the ``sbs_volume`` boot
volumes GPU instances use) and Marketplace v2 (local images by label). Errors carry
Scaleway's bodies: ``{"type", "message", ...}`` with ``quotas_exceeded``,
``out_of_stock``, ``denied_authentication``, ``not_found``, ``precondition_failed``.

Semantics modelled on purpose, because they are where clouds leak: a server is created
*stopped*; ``poweron`` checks stock; ``poweroff`` goes through *stopping* to *stopped* and
``reboot`` through *starting* to *running* (``reboots`` counts them); ``terminate`` deletes
the server and its local volumes but only *detaches* block volumes and flexible IPs (they keep
billing until deleted); a block volume still referenced by a server cannot be deleted.

Fault injection: ``quota[type]``, ``stock[(zone, type)]``, ``fail_next(...)`` (answer an error
without applying the request) and ``drop_next(...)`` (apply the request, then close the
connection without answering: a lost response).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

ACCESS_KEY = "SCWABCDEFGHIJKLMNOPQ"
SECRET_KEY = "11111111-2222-4333-8444-555555555555"
PROJECT_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
GIB = 1024**3

GPU_TYPES: dict[str, dict[str, Any]] = {
    "L4-1-24G": {"gpu": 1, "name": "L4", "mem": 24, "ncpus": 8, "ram": 48, "price": 0.75},
    "L4-2-24G": {"gpu": 2, "name": "L4", "mem": 24, "ncpus": 16, "ram": 96, "price": 1.5},
    "L40S-1-48G": {"gpu": 1, "name": "L40S", "mem": 48, "ncpus": 8, "ram": 96, "price": 1.4},
    "H100-1-80G": {"gpu": 1, "name": "H100", "mem": 80, "ncpus": 24, "ram": 240, "price": 2.73},
    "H100-2-80G": {"gpu": 2, "name": "H100", "mem": 80, "ncpus": 48, "ram": 480, "price": 5.46},
    "RENDER-S": {"gpu": 1, "name": "P100", "mem": 16, "ncpus": 10, "ram": 42, "price": 1.24},
}
CPU_TYPES = {f"DEV1-{size}": {"ncpus": n, "ram": n * 2} for size, n in (("S", 2), ("M", 3))}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, type_: str, message: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return status, {"type": type_, "message": message, **extra}


def not_found(resource: str, resource_id: str) -> tuple[int, dict[str, Any]]:
    return _error(
        404, "not_found", "resource is not found", resource=resource, resource_id=resource_id
    )


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    response: tuple[int, dict[str, Any]] | None  # None: drop the connection after applying
    remaining: int = 1


@dataclass
class FakeScaleway:
    zones: tuple[str, ...] = ("fr-par-2", "nl-ams-1")
    # Max servers per commercial type (absent: unlimited).
    quota: dict[str, int] = field(default_factory=dict)
    # Units in stock per (zone, type) consumed at power-on (absent: plenty).
    stock: dict[tuple[str, str], int] = field(default_factory=dict)
    availability: dict[tuple[str, str], str] = field(default_factory=dict)
    # GETs of a starting server before it is running; of a stopping server before it is gone.
    boot_polls: int = 1
    stop_polls: int = 1

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.servers: dict[str, dict[str, Any]] = {}
        self.ips: dict[str, dict[str, Any]] = {}
        self.block_volumes: dict[str, dict[str, Any]] = {}
        self.instance_volumes: dict[str, dict[str, Any]] = {}
        self.user_data: dict[tuple[str, str], bytes] = {}
        self.security_groups: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.images = {
            zone: {"id": str(uuid.uuid4()), "label": "ubuntu_jammy_gpu_os_12"}
            for zone in self.zones
        }
        self._polls: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None

    # --- test API ------------------------------------------------------------------------------

    def fail_next(self, method: str, path: str, status: int, body: dict[str, Any]) -> None:
        self.faults.append(Fault(method, re.compile(path), (status, body)))

    def drop_next(self, method: str, path: str) -> None:
        self.faults.append(Fault(method, re.compile(path), None))

    def leaks(self) -> dict[str, list[str]]:
        """Everything still existing (and billing)."""
        with self.lock:
            return {
                "servers": sorted(self.servers),
                "ips": sorted(self.ips),
                "volumes": sorted([*self.block_volumes, *self.instance_volumes]),
            }

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    # --- server lifecycle ------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                status, body, headers, drop = fake.dispatch(
                    self.command, url.path, query, raw, dict(self.headers)
                )
                if drop:
                    self.close_connection = True
                    return
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                ctype = "text/plain" if isinstance(body, bytes) else "application/json"
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- dispatch --------------------------------------------------------------------------------

    def dispatch(
        self, method: str, path: str, query: dict[str, str], raw: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str], bool]:
        lowered = {k.lower(): v for k, v in headers.items()}
        with self.lock:
            self.requests.append((method, path))
            if lowered.get("x-auth-token") != SECRET_KEY:
                status, body = _error(
                    401,
                    "denied_authentication",
                    "authentication is denied",
                    method="api_key",
                    reason="invalid_argument",
                )
                return status, body, {}, False
            fault = next(
                (f for f in self.faults if f.method == method and f.path.search(path)), None
            )
            if fault is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                if fault.response is not None:
                    return fault.response[0], fault.response[1], {}, False
            result = self._route(method, path, query, raw)
            status, body = result[0], result[1]
            extra = result[2] if len(result) > 2 else {}
            return status, body, extra, fault is not None

    def _route(self, method: str, path: str, q: dict[str, str], raw: bytes) -> tuple[Any, ...]:
        def body() -> dict[str, Any]:
            return json.loads(raw or b"{}")

        routes: list[tuple[str, str, Callable[..., tuple[Any, ...]]]] = [
            ("GET", r"^/instance/v1/zones/([^/]+)/products/servers$", self._products),
            ("GET", r"^/instance/v1/zones/([^/]+)/products/servers/availability$", self._avail),
            ("GET", r"^/instance/v1/zones/([^/]+)/servers$", self._list_servers),
            ("POST", r"^/instance/v1/zones/([^/]+)/servers$", self._create_server),
            ("GET", r"^/instance/v1/zones/([^/]+)/servers/([^/]+)$", self._get_server),
            ("DELETE", r"^/instance/v1/zones/([^/]+)/servers/([^/]+)$", self._delete_server),
            ("POST", r"^/instance/v1/zones/([^/]+)/servers/([^/]+)/action$", self._action),
            ("GET", r"^/instance/v1/zones/([^/]+)/servers/([^/]+)/user_data$", self._ud_list),
            ("PATCH", r"^/instance/v1/zones/([^/]+)/servers/([^/]+)/user_data/(.+)$", self._ud_set),
            ("GET", r"^/instance/v1/zones/([^/]+)/servers/([^/]+)/user_data/(.+)$", self._ud_get),
            ("GET", r"^/instance/v1/zones/([^/]+)/ips$", self._list_ips),
            ("POST", r"^/instance/v1/zones/([^/]+)/ips$", self._create_ip),
            ("DELETE", r"^/instance/v1/zones/([^/]+)/ips/([^/]+)$", self._delete_ip),
            ("DELETE", r"^/instance/v1/zones/([^/]+)/volumes/([^/]+)$", self._delete_ivolume),
            ("GET", r"^/block/v1/zones/([^/]+)/volumes$", self._list_volumes),
            ("PATCH", r"^/block/v1/zones/([^/]+)/volumes/([^/]+)$", self._update_volume),
            ("DELETE", r"^/block/v1/zones/([^/]+)/volumes/([^/]+)$", self._delete_volume),
            ("GET", r"^/marketplace/v2/local-images$", self._local_images),
            ("GET", r"^/instance/v1/zones/([^/]+)/security_groups$", self._list_sgs),
            ("POST", r"^/instance/v1/zones/([^/]+)/security_groups$", self._create_sg),
            ("PUT", r"^/instance/v1/zones/([^/]+)/security_groups/([^/]+)/rules$", self._set_rules),
        ]
        for route_method, pattern, handler in routes:
            match = re.match(pattern, path)
            if route_method == method and match:
                return handler(*match.groups(), q=q, body=body, raw=raw)
        return _error(404, "not_found", f"no route {method} {path}")

    @staticmethod
    def _page(items: list[Any], q: dict[str, str]) -> tuple[list[Any], dict[str, str]]:
        page = int(q.get("page") or 1)
        per_page = int(q.get("per_page") or q.get("page_size") or 50)
        start = (page - 1) * per_page
        return items[start : start + per_page], {"x-total-count": str(len(items))}

    # --- products --------------------------------------------------------------------------------

    def _products(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        catalog: dict[str, Any] = {}
        for code, t in GPU_TYPES.items():
            catalog[code] = {
                "hourly_price": t["price"],
                "monthly_price": round(t["price"] * 730, 2),
                "ncpus": t["ncpus"],
                "ram": t["ram"] * GIB,
                "arch": "x86_64",
                "gpu": t["gpu"],
                "gpu_info": {
                    "gpu_manufacturer": "NVIDIA",
                    "gpu_name": t["name"],
                    "gpu_memory": t["mem"] * GIB,
                },
                "alt_names": [],
                "volumes_constraint": {"min_size": 0, "max_size": 0},
                "network": {"sum_internal_bandwidth": 0, "interfaces": []},
                "capabilities": {"block_storage": True, "boot_types": ["local"]},
                "end_of_service": False,
                "block_bandwidth": 2 * 10**9,
            }
        for code, t in CPU_TYPES.items():
            catalog[code] = {
                "hourly_price": 0.01,
                "ncpus": t["ncpus"],
                "ram": t["ram"] * GIB,
                "arch": "x86_64",
                "gpu": 0,
                "end_of_service": False,
            }
        keys = sorted(catalog)
        page, headers = self._page(keys, kw["q"])
        return 200, {"servers": {k: catalog[k] for k in page}}, headers

    def _avail(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        keys = sorted([*GPU_TYPES, *CPU_TYPES])
        page, headers = self._page(keys, kw["q"])
        out = {}
        for code in page:
            default = "shortage" if self.stock.get((zone, code), 1) <= 0 else "available"
            out[code] = {"availability": self.availability.get((zone, code), default)}
        return 200, {"servers": out}, headers

    def _local_images(self, **kw: Any) -> tuple[Any, ...]:
        q = kw["q"]
        image = self.images.get(q.get("zone", ""))
        items = []
        if image and q.get("image_label") == image["label"]:
            items.append(
                {
                    "id": image["id"],
                    "label": image["label"],
                    "zone": q["zone"],
                    "arch": "x86_64",
                    "type": q.get("type") or "instance_sbs",
                    "compatible_commercial_types": sorted(GPU_TYPES),
                }
            )
        return 200, {"local_images": items, "total_count": len(items)}

    # --- servers ---------------------------------------------------------------------------------

    def _server_json(self, server: dict[str, Any]) -> dict[str, Any]:
        ips = [self._ip_json(self.ips[i], with_server=False) for i in server["ip_ids"]]
        volumes = {}
        for index, (kind, vid) in enumerate(server["volume_refs"]):
            volume = self.block_volumes.get(vid) or self.instance_volumes.get(vid)
            if volume is None:
                continue
            volumes[str(index)] = {
                "id": vid,
                "name": volume["name"],
                "volume_type": kind,
                "size": volume["size"],
                "boot": index == 0,
                "zone": server["zone"],
                "state": "in_use" if kind == "sbs_volume" else "available",
                "server": {"id": server["id"], "name": server["name"]},
            }
        return {
            "id": server["id"],
            "name": server["name"],
            "organization": PROJECT_ID,
            "project": server["project"],
            "allowed_actions": ["poweron", "terminate"]
            if server["state"] == "stopped"
            else ["poweroff", "terminate", "reboot"],
            "tags": server["tags"],
            "commercial_type": server["commercial_type"],
            "creation_date": server["creation_date"],
            "modification_date": _now(),
            "dynamic_ip_required": server["dynamic_ip_required"],
            "routed_ip_enabled": True,
            "enable_ipv6": False,
            "hostname": server["name"],
            "image": {"id": server["image"], "name": "GPU OS 12", "arch": "x86_64"},
            "protected": False,
            "private_ip": None,
            "public_ip": ips[0] if ips else None,
            "public_ips": ips,
            "mac_address": "de:00:00:00:00:01",
            "state": server["state"],
            "state_detail": server["state"],
            "boot_type": "local",
            "volumes": volumes,
            "security_group": {"id": server.get("security_group") or "sg-default", "name": ""},
            "maintenances": [],
            "arch": "x86_64",
            "private_nics": [],
            "zone": server["zone"],
            "filesystems": [],
            "end_of_service": False,
        }

    def _tick(self, server_id: str) -> None:
        """Advance transitional states as a client polls."""
        server = self.servers.get(server_id)
        if server is None:
            return
        if server["state"] == "starting":
            self._polls[server_id] = self._polls.get(server_id, 0) + 1
            if self._polls[server_id] >= self.boot_polls:
                server["state"] = "running"
        elif server["state"] == "stopping":
            self._polls[server_id] = self._polls.get(server_id, 0) + 1
            if self._polls[server_id] >= self.stop_polls:
                if server.pop("powering_off", False):
                    server["state"] = "stopped"  # poweroff: the server stays, stopped
                else:
                    self._remove_server(server_id, terminate=True)

    def _remove_server(self, server_id: str, *, terminate: bool) -> None:
        server = self.servers.pop(server_id)
        for kind, vid in server["volume_refs"]:
            if kind == "sbs_volume" and vid in self.block_volumes:
                # Block volumes survive their server: detached, still billing.
                self.block_volumes[vid]["references"] = []
                self.block_volumes[vid]["status"] = "available"
            elif terminate:
                self.instance_volumes.pop(vid, None)
            elif vid in self.instance_volumes:
                self.instance_volumes[vid]["server"] = None
        for ip_id in server["ip_ids"]:
            if ip_id in self.ips:
                self.ips[ip_id]["server"] = None
                self.ips[ip_id]["state"] = "detached"
        for key in [k for k in self.user_data if k[0] == server_id]:
            del self.user_data[key]

    def _list_servers(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        q = kw["q"]
        wanted = [t for t in (q.get("tags") or "").split(",") if t]
        for server_id in list(self.servers):
            self._tick(server_id)
        items = [
            self._server_json(s)
            for s in sorted(self.servers.values(), key=lambda s: s["creation_date"])
            if s["zone"] == zone
            and (not q.get("project") or s["project"] == q["project"])
            and all(t in s["tags"] for t in wanted)
        ]
        page, headers = self._page(items, q)
        return 200, {"servers": page}, headers

    def _create_server(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        data = kw["body"]()
        ctype = data.get("commercial_type", "")
        if ctype not in GPU_TYPES and ctype not in CPU_TYPES:
            return _error(
                400,
                "invalid_arguments",
                "Validation Error",
                fields={"commercial_type": ["unknown"]},
            )
        if zone not in self.zones:
            return _error(400, "invalid_arguments", f"unknown zone {zone}")
        if data.get("image") not in (self.images[zone]["id"], self.images[zone]["label"]):
            return not_found("image", str(data.get("image")))
        used = sum(1 for s in self.servers.values() if s["commercial_type"] == ctype)
        if ctype in self.quota and used >= self.quota[ctype]:
            return _error(
                403,
                "quotas_exceeded",
                "quota(s) exceeded for this resource",
                details=[
                    {"resource": f"instances_{ctype}", "quota": self.quota[ctype], "current": used}
                ],
            )
        for ip_id in data.get("public_ips") or []:
            if ip_id not in self.ips:
                return not_found("instance_ip", ip_id)
            if self.ips[ip_id]["server"] is not None:
                return _error(400, "invalid_arguments", f"ip {ip_id} is already attached")
        server_id = str(uuid.uuid4())
        name = data.get("name") or f"srv-{server_id[:8]}"
        refs: list[tuple[str, str]] = []
        for _key, template in sorted((data.get("volumes") or {}).items()):
            kind = template.get("volume_type", "l_ssd")
            vid = str(uuid.uuid4())
            volume = {
                "id": vid,
                "name": template.get("name") or f"{name}-vol",
                "size": int(template.get("size") or 0),
                "created_at": _now(),
                "tags": [],
                "zone": zone,
            }
            if kind == "sbs_volume":
                volume.update(
                    type="sbs_15k",
                    status="in_use",
                    project_id=data.get("project") or PROJECT_ID,
                    references=[
                        {
                            "id": str(uuid.uuid4()),
                            "product_resource_type": "instance_server",
                            "product_resource_id": server_id,
                            "type": "exclusive",
                            "status": "attached",
                            "created_at": _now(),
                        }
                    ],
                )
                self.block_volumes[vid] = volume
            else:
                volume.update(volume_type=kind, server={"id": server_id})
                self.instance_volumes[vid] = volume
            refs.append((kind, vid))
        ip_ids = list(data.get("public_ips") or [])
        for ip_id in ip_ids:
            self.ips[ip_id]["server"] = {"id": server_id, "name": name}
            self.ips[ip_id]["state"] = "attached"
        server = {
            "id": server_id,
            "name": name,
            "zone": zone,
            "project": data.get("project") or PROJECT_ID,
            "commercial_type": ctype,
            "image": data.get("image"),
            "tags": list(data.get("tags") or []),
            "security_group": data.get("security_group"),
            "state": "stopped",
            "creation_date": _now(),
            "dynamic_ip_required": bool(data.get("dynamic_ip_required", True)),
            "volume_refs": refs,
            "ip_ids": ip_ids,
        }
        self.servers[server_id] = server
        return 201, {"server": self._server_json(server)}

    def _get_server(self, zone: str, server_id: str, **kw: Any) -> tuple[Any, ...]:
        self._tick(server_id)
        server = self.servers.get(server_id)
        if server is None or server["zone"] != zone:
            return not_found("instance_server", server_id)
        return 200, {"server": self._server_json(server)}

    def _delete_server(self, zone: str, server_id: str, **kw: Any) -> tuple[Any, ...]:
        server = self.servers.get(server_id)
        if server is None:
            return not_found("instance_server", server_id)
        if server["state"] != "stopped":
            return _error(400, "invalid_request_error", "instance should be stopped")
        self._remove_server(server_id, terminate=False)
        return 204, b""

    def _action(self, zone: str, server_id: str, **kw: Any) -> tuple[Any, ...]:
        server = self.servers.get(server_id)
        if server is None:
            return not_found("instance_server", server_id)
        action = kw["body"]().get("action")
        if action == "poweron":
            if server["state"] != "stopped":
                return _error(400, "invalid_request_error", "server should be stopped")
            key = (zone, server["commercial_type"])
            if self.stock.get(key, 1) <= 0:
                return _error(412, "out_of_stock", "out of stock", resource="instance_server")
            if key in self.stock:
                self.stock[key] -= 1
            server["state"] = "starting"
            self._polls[server_id] = 0
        elif action == "terminate":
            if server["state"] not in ("running", "starting"):
                return _error(400, "invalid_request_error", "server should be running")
            server["state"] = "stopping"
            self._polls[server_id] = 0
        elif action == "poweroff":
            if server["state"] not in ("running", "starting"):
                return _error(400, "invalid_request_error", "server should be running")
            server["state"] = "stopping"
            server["powering_off"] = True
            self._polls[server_id] = 0
        elif action == "reboot":
            if server["state"] != "running":
                return _error(400, "invalid_request_error", "server should be running")
            server["state"] = "starting"  # back to running after ``boot_polls`` GETs
            server["reboots"] = server.get("reboots", 0) + 1
            self._polls[server_id] = 0
        else:
            return _error(400, "invalid_arguments", f"unsupported action {action}")
        task = {
            "id": str(uuid.uuid4()),
            "description": f"server_{action}",
            "status": "pending",
            "href_from": f"/servers/{server_id}/action",
            "progress": 0,
            "started_at": _now(),
            "zone": zone,
        }
        return 202, {"task": task}

    def _ud_list(self, zone: str, server_id: str, **kw: Any) -> tuple[Any, ...]:
        if server_id not in self.servers:
            return not_found("instance_server", server_id)
        keys = sorted(k for s, k in self.user_data if s == server_id)
        return 200, {"user_data": keys}

    def _ud_set(self, zone: str, server_id: str, key: str, **kw: Any) -> tuple[Any, ...]:
        if server_id not in self.servers:
            return not_found("instance_server", server_id)
        self.user_data[(server_id, key)] = kw["raw"]
        return 204, b""

    def _ud_get(self, zone: str, server_id: str, key: str, **kw: Any) -> tuple[Any, ...]:
        if (server_id, key) not in self.user_data:
            return not_found("instance_user_data", key)
        return 200, self.user_data[(server_id, key)]

    # --- IPs and volumes --------------------------------------------------------------------------

    def _ip_json(self, ip: dict[str, Any], *, with_server: bool = True) -> dict[str, Any]:
        out = {
            "id": ip["id"],
            "address": ip["address"],
            "gateway": "62.210.0.1",
            "netmask": "32",
            "family": "inet",
            "dynamic": False,
            "provisioning_mode": "dhcp",
            "tags": ip["tags"],
            "state": ip["state"],
            "type": "routed_ipv4",
            "zone": ip["zone"],
            "project": PROJECT_ID,
            "organization": PROJECT_ID,
        }
        if with_server:
            out["server"] = ip["server"]
        return out

    def _list_ips(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        wanted = [t for t in (kw["q"].get("tags") or "").split(",") if t]
        items = [
            self._ip_json(ip)
            for ip in self.ips.values()
            if ip["zone"] == zone and all(t in ip["tags"] for t in wanted)
        ]
        page, headers = self._page(items, kw["q"])
        return 200, {"ips": page}, headers

    def _create_ip(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        data = kw["body"]()
        ip_id = str(uuid.uuid4())
        n = len(self.ips) + 10
        ip = {
            "id": ip_id,
            "address": f"51.15.{n // 250}.{n % 250 + 1}",
            "tags": list(data.get("tags") or []),
            "server": None,
            "state": "detached",
            "zone": zone,
        }
        self.ips[ip_id] = ip
        return 201, {"ip": self._ip_json(ip)}

    # --- security groups (the fields the adapter sets and reads) --------------------------------

    def _sg_json(self, sg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in sg.items() if k != "rules"} | {
            "servers": [],
            "state": "available",
            "creation_date": _now(),
            "modification_date": _now(),
            "organization": PROJECT_ID,
            "project": PROJECT_ID,
            "organization_default": False,
            "project_default": False,
        }

    def _list_sgs(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        wanted = [t for t in (kw["q"].get("tags") or "").split(",") if t]
        items = [
            self._sg_json(sg)
            for sg in self.security_groups.values()
            if sg["zone"] == zone and all(t in sg["tags"] for t in wanted)
        ]
        page, headers = self._page(items, kw["q"])
        return 200, {"security_groups": page, "total_count": len(items)}, headers

    def _create_sg(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        data = kw["body"]()
        sg_id = str(uuid.uuid4())
        sg = {
            "id": sg_id,
            "name": data.get("name") or "",
            "description": data.get("description") or "",
            "tags": list(data.get("tags") or []),
            "stateful": bool(data.get("stateful")),
            "inbound_default_policy": data.get("inbound_default_policy") or "accept",
            "outbound_default_policy": data.get("outbound_default_policy") or "accept",
            "enable_default_security": bool(data.get("enable_default_security", True)),
            "zone": zone,
            "rules": [],
        }
        self.security_groups[sg_id] = sg
        return 201, {"security_group": self._sg_json(sg)}

    def _set_rules(self, zone: str, sg_id: str, **kw: Any) -> tuple[Any, ...]:
        sg = self.security_groups.get(sg_id)
        if sg is None or sg["zone"] != zone:
            return not_found("security_group", sg_id)
        rules = []
        for rule in kw["body"]().get("rules") or []:
            rules.append({**rule, "id": rule.get("id") or str(uuid.uuid4()), "zone": zone})
        sg["rules"] = rules
        return 200, {"rules": rules}

    def _delete_ip(self, zone: str, ip_id: str, **kw: Any) -> tuple[Any, ...]:
        ip = self.ips.pop(ip_id, None)
        if ip is None:
            return not_found("instance_ip", ip_id)
        if ip["server"] is not None and ip["server"]["id"] in self.servers:
            self.servers[ip["server"]["id"]]["ip_ids"].remove(ip_id)
        return 204, b""

    def _delete_ivolume(self, zone: str, volume_id: str, **kw: Any) -> tuple[Any, ...]:
        volume = self.instance_volumes.get(volume_id)
        if volume is None:
            return not_found("instance_volume", volume_id)
        if volume.get("server"):
            return _error(400, "invalid_request_error", "volume is attached to a server")
        del self.instance_volumes[volume_id]
        return 204, b""

    def _list_volumes(self, zone: str, **kw: Any) -> tuple[Any, ...]:
        wanted = [t for t in (kw["q"].get("tags") or "").split(",") if t]
        items = [
            v
            for v in self.block_volumes.values()
            if v["zone"] == zone and (not wanted or any(t in v["tags"] for t in wanted))
        ]
        page, _headers = self._page(items, kw["q"])
        return 200, {"volumes": page, "total_count": len(items)}

    def _update_volume(self, zone: str, volume_id: str, **kw: Any) -> tuple[Any, ...]:
        volume = self.block_volumes.get(volume_id)
        if volume is None:
            return not_found("volume", volume_id)
        data = kw["body"]()
        if "tags" in data and data["tags"] is not None:
            volume["tags"] = list(data["tags"])
        return 200, volume

    def _delete_volume(self, zone: str, volume_id: str, **kw: Any) -> tuple[Any, ...]:
        volume = self.block_volumes.get(volume_id)
        if volume is None:
            return not_found("volume", volume_id)
        if volume["references"]:
            return _error(
                412,
                "precondition_failed",
                "resource is still in use",
                precondition="resource_still_in_use",
            )
        del self.block_volumes[volume_id]
        return 204, b""
