"""The parts of the local cache the engine writes (see `mk.cache.parts` for what gc does with each)."""

from mk.cache.parts import CachePart, Policy
from mk.engine.resident import RUN_FOLDER

GRAPHS = CachePart("graphs", "analysed graphs, with the results their last build used (the key is kept)",
                   Policy.EVICTABLE, kept=("key",))
EXPLAIN = CachePart("explain", "what `mk explain` compares, one per workspace", Policy.EVICTABLE)
# Kept: a few digests per workspace, and `mk diff TARGET` says so when a tree it names is gone.
TREE_HISTORY = CachePart("tree-history", "the trees each output was before and after, for `mk diff TARGET`",
                         Policy.KEPT)
LOGS = CachePart("logs", "which log each action's last run printed, for `mk log`, one per workspace",
                 Policy.EVICTABLE)
# Kept: a living server's socket and lock are in it (a few small files per workspace).
SERVERS = CachePart(RUN_FOLDER, "each workspace's build server: its socket, lock, pid and log", Policy.KEPT)
SANDBOX_DEBUG = CachePart("sandbox-debug", "sandboxes kept by `mk build --sandbox-debug`", Policy.DROPPED)

ENGINE_CACHE_PARTS = (GRAPHS, EXPLAIN, LOGS, TREE_HISTORY, SERVERS, SANDBOX_DEBUG)
