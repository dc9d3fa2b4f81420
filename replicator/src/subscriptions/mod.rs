//! Postgres Changes subscriptions: one per binding and table, for a channel of a socket on a hub.
//!
//! - [`registry`]: the subscriptions in memory, by table, as the dispatcher reads them.
//! - [`store`]: checking bindings against the database and storing them (`sluice.subscriptions`).
//! - [`api`]: the internal endpoints hubs call (`/v1/subscriptions`).
//! - [`publication`]: tables published later, taken by wildcard bindings.
//!
//! A registration answers only once the stream has passed a mark written to the WAL after the
//! subscription was in the registry, so every change committed after the client hears
//! "Subscribed to PostgreSQL" is evaluated with it.

pub mod api;
pub mod publication;
pub mod registry;
pub mod store;

use std::sync::Arc;

use sluice_shared::internal::Unsubscribe;
use tracing::{debug, warn, Instrument};

use crate::db::Db;
use registry::Registry;

/// The prefix of the logical messages registrations write to learn when the stream passed them.
pub const SYNC_PREFIX: &str = "sluice.sync";

/// Drops the subscriptions of channels hubs said are gone: from the registry at once, from the
/// database in the background.
pub fn forget_gone(registry: &Registry, db: &Arc<Db>, gone: Vec<Unsubscribe>) {
    for gone in gone {
        debug!(
            "{} says {}/{} is gone; dropping its subscriptions",
            gone.hub,
            gone.socket,
            gone.topic.as_deref().unwrap_or("*")
        );
        registry.remove(&gone.hub, &gone.socket, gone.topic.as_deref());
        let db = db.clone();
        tokio::spawn(
            async move {
                if let Ok(client) = db.client().await {
                    let removed = store::remove(&*client, &gone.hub, &gone.socket, gone.topic.as_deref()).await;
                    if let Err(e) = removed {
                        warn!("SubscriptionDeletionFailed: removing subscriptions of a gone channel: {e}");
                    }
                }
            }
            .in_current_span(),
        );
    }
}
