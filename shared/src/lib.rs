//! The sans-IO core of sluice, compiled for the gateway worker (wasm32) and the replicator (native).
//! Nothing here reads a clock, draws randomness or does I/O: callers pass those in.
//!
//! - [`connect`]: the decision on a WebSocket upgrade, tenant and Durable Object names.
//! - [`filter`]: evaluating subscription filters against a row, typed as upstream.
//! - [`frame`]: the wire: V1/V2 text frames, V2 binary frames, reply/push builders, fan-out encoding.
//! - [`join`]: topics and `phx_join` payloads.
//! - [`internal`]: wire types of the internal API (between Durable Objects, hubs and the replicator).
//! - [`jwt`]: token verification with upstream's error texts.
//! - [`limits`]: tenant limits and rate counters.
//! - [`pgvalue`]: column values rendered as `to_jsonb` does.
//! - [`presence`]: a channel's presence registry and diffs.
//! - [`rest`]: the REST broadcast API's requests and answers.
//! - [`subscription`]: `postgres_changes` bindings and the filter grammar.
//! - [`session`]: one socket's channels and what each inbound message makes happen.

pub mod connect;
pub mod filter;
pub mod frame;
pub mod internal;
pub mod join;
pub mod jwt;
pub mod limits;
pub mod pgvalue;
pub mod presence;
pub mod rest;
pub mod session;
pub mod subscription;
