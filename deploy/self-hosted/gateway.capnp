# The gateway as a production server on workerd (the npm package `workerd`), without Cloudflare
# and without wrangler. `scripts/serve gateway` runs it:
#
#   workerd serve deploy/self-hosted/gateway.capnp --experimental --import-path <worker build> \
#     --socket-addr http=<address> --directory-path storage=<state directory>
#
# The worker's modules are found on the import path: the folder scripts/build-worker fills
# (gateway-worker/build), or another build of it (sluice-testkit's SLUICE_GATEWAY_BUILD).
# Durable Objects keep their SQLite storage under the state directory, which survives restarts.
# Settings come from the process environment: the same names as the Worker's vars and secrets
# (docs/deploy.md); unset ones take the Worker's defaults.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "gateway", worker = .gateway),
    # Durable Object storage; the path is set with --directory-path storage=<dir>.
    (name = "storage", disk = (path = "/var/lib/sluice/gateway", writable = true)),
    # Outbound requests (to the replicator): on this machine or the internet, public CAs trusted.
    (name = "internet", network = (allow = ["public", "private", "local"], tlsOptions = (trustBrowserCas = true))),
  ],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "gateway")],
);

const gateway :Workerd.Worker = (
  compatibilityDate = "2026-11-01",
  modules = [
    (name = "index.js", esModule = embed "/index.js"),
    (name = "index_bg.wasm", wasm = embed "/index_bg.wasm"),
  ],
  bindings = [
    (name = "SOCKET_HUB", durableObjectNamespace = (className = "SocketHub")),
    (name = "CHANNEL", durableObjectNamespace = (className = "Channel")),
    (name = "DIRECTORY", durableObjectNamespace = (className = "Directory")),
    (name = "JWT_SECRET", fromEnvironment = "JWT_SECRET"),
    (name = "JWT_JWKS", fromEnvironment = "JWT_JWKS"),
    (name = "INTERNAL_SECRET", fromEnvironment = "INTERNAL_SECRET"),
    (name = "REPLICATOR_URL", fromEnvironment = "REPLICATOR_URL"),
    (name = "API_JWT_SECRET", fromEnvironment = "API_JWT_SECRET"),
    (name = "API_JWT_SECRET_NEXT", fromEnvironment = "API_JWT_SECRET_NEXT"),
    (name = "DB_ENC_PUBLIC_KEY", fromEnvironment = "DB_ENC_PUBLIC_KEY"),
    (name = "TENANT_HOSTS", fromEnvironment = "TENANT_HOSTS"),
    (name = "DEFAULT_TENANT", fromEnvironment = "DEFAULT_TENANT"),
    (name = "METRICS_JWT_SECRET", fromEnvironment = "METRICS_JWT_SECRET"),
    (name = "TENANT_LIMITS", fromEnvironment = "TENANT_LIMITS"),
    (name = "HUB_SHARDS", fromEnvironment = "HUB_SHARDS"),
    (name = "CONNECT_ERROR_BACKOFF_MS", fromEnvironment = "CONNECT_ERROR_BACKOFF_MS"),
    (name = "CHANNEL_ERROR_BACKOFF_MS", fromEnvironment = "CHANNEL_ERROR_BACKOFF_MS"),
    (name = "IDLE_TIMEOUT_MS", fromEnvironment = "IDLE_TIMEOUT_MS"),
    (name = "MAX_FRAME_BYTES", fromEnvironment = "MAX_FRAME_BYTES"),
    (name = "REPLICATION_READY_TIMEOUT_MS", fromEnvironment = "REPLICATION_READY_TIMEOUT_MS"),
    (name = "INSPECTOR", fromEnvironment = "INSPECTOR"),
  ],
  durableObjectNamespaces = [
    (className = "SocketHub", uniqueKey = "sluice-SocketHub", enableSql = true),
    (className = "Channel", uniqueKey = "sluice-Channel", enableSql = true),
    (className = "Directory", uniqueKey = "sluice-Directory", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "storage"),
);
