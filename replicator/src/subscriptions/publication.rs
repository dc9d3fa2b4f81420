//! Tables published later: every [`CHECK_EVERY`] the publication's tables are compared with the
//! last look; when they changed, wildcard bindings (schema-wide or `*`) take the tables they
//! match and had no subscription on (`store::take_published_tables`). A table removed from the
//! publication needs nothing: pgoutput stops sending its changes. Upstream checks its
//! publication's tables periodically too (`CheckOidsError` in its error codes).

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::registry::Registry;
use super::store;
use crate::db::Db;

/// How often the publication's tables are compared.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs until the process ends. The first look, at start, also catches tables published while
/// the replicator was down.
pub async fn watch(db: Arc<Db>, registry: Arc<Registry>, publication: String) {
    let mut last: Option<Vec<u32>> = None;
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match look(&db, &registry, &publication, last.as_deref()).await {
            Ok(tables) => last = Some(tables),
            Err(e) => warn!("CheckOidsError: reading the tables of publication {publication} failed: {e}; retrying"),
        }
    }
}

/// The publication's tables now; when they differ from `last`, wildcard bindings take the new ones.
async fn look(
    db: &Db,
    registry: &Registry,
    publication: &str,
    last: Option<&[u32]>,
) -> Result<Vec<u32>, tokio_postgres::Error> {
    let client = db.client().await?;
    let sql = format!(
        "select coalesce(array_agg(oid order by 1), '{{}}') from ({}) p",
        store::PUBLICATION_TABLES
    );
    let tables: Vec<u32> = client.query_one(&sql, &[&publication]).await?.get(0);
    if last == Some(tables.as_slice()) {
        return Ok(tables);
    }
    let mut client = db.dedicated().await?;
    let tx = client.transaction().await?;
    // Registrations take this lock shared: none replaces a channel's rows meanwhile.
    tx.execute("select pg_advisory_xact_lock($1)", &[&store::LOCK]).await?;
    let taken = store::take_published_tables(&tx, publication).await?;
    tx.commit().await?;
    if !taken.is_empty() {
        info!(
            "{} wildcard subscriptions took tables published since the last look",
            taken.len()
        );
    }
    for (relid, sub) in taken {
        registry.add(relid, sub);
    }
    Ok(tables)
}
