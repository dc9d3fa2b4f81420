//! The sans-IO core of sluice, compiled for the gateway worker (wasm32) and the replicator (native).
//! Nothing here reads a clock, draws randomness or does I/O: callers pass those in.
//!
//! - [`bindings`]: `postgres_changes` bindings and the filter grammar.
//! - [`connect`]: the decision on a WebSocket upgrade, tenant and Durable Object names.
//! - [`filter`]: evaluating subscription filters against a row, typed as upstream.
//! - [`frame`]: the wire: V1/V2 text frames, V2 binary frames, reply/push builders, fan-out encoding.
//! - [`join`]: topics and `phx_join` payloads.
//! - [`internal`]: wire types of the internal API (between Durable Objects, hubs and the replicator).
//! - [`jwt`]: token verification with upstream's error texts.
//! - [`hold`]: the hold queue: a socket's messages wait behind one that waits for policies.
//! - [`limits`]: tenant limits and rate counters.
//! - [`metrics`]: what the gateway's hubs count, rendered for Prometheus.
//! - [`pgvalue`]: column values rendered as `to_jsonb` does.
//! - [`position`]: LSNs, stream positions, and the watermark that drops what was delivered.
//! - [`presence`]: a channel's presence registry and diffs.
//! - [`rest`]: the REST broadcast API's requests and answers.
//! - [`roster`]: which of a hub's sockets are in which room; who receives a fan-out.
//! - [`sealed`]: database passwords sealed for the replicators (`DB_ENC_KEY`).
//! - [`session`]: one socket's channels and what each inbound message makes happen.
//! - [`signature`]: internal requests signed with the shared secret, within a time window.
//! - [`tenants`]: tenants as the management API takes and stores them, and which one a host names.
//! - [`texts`]: every client-visible text, with the upstream file it comes from.

pub mod bindings;
pub mod connect;
pub mod filter;
pub mod frame;
pub mod hold;
pub mod internal;
pub mod join;
pub mod jwt;
pub mod limits;
pub mod metrics;
pub mod pgvalue;
pub mod position;
pub mod presence;
pub mod rest;
pub mod roster;
pub mod sealed;
pub mod session;
pub mod signature;
pub mod tenants;
pub mod texts;
