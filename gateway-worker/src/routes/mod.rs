//! The Worker's own routes (the router is `crate`'s `fetch`):
//!
//! - [`websocket`]: the client socket endpoints; authenticate the upgrade, pick the hub.
//! - [`broadcast`]: REST broadcast, batch and single.
//! - [`tenants`]: tenant health for admins.
//! - [`internal`]: what the replicator calls: row changes to hubs, database broadcasts to Channels.

pub mod broadcast;
pub mod internal;
pub mod tenants;
pub mod websocket;
