//! Set-up: everything the replicator checks and prepares in the database before it streams, in
//! this order (the slot must not predate a publication it reads):
//!
//! 1. [`preflight::check`]: not behind a pooler in transaction mode, `wal_level`, the
//!    replication privilege, free slots — each failure a message naming the fix;
//! 2. [`migrations::run`]: sluice's own schema (`sluice`), and Supabase's `realtime` schema where
//!    the database has none;
//! 3. [`preflight::prepare_stream`]: the publication and the persistent slot.
//!
//! And, once it serves its API, [`tenant::register`]: the tenant it serves registered with the
//! gateway, when it is configured to (upstream's self-hosted way).

pub mod migrations;
pub mod preflight;
pub mod role;
pub mod tenant;

/// The publication of `realtime.messages` (created by the migrations), read by the same slot as
/// the tables' publication.
pub const MESSAGES_PUBLICATION: &str = "sluice_messages";

use crate::config::Config;
use crate::db::Db;
use crate::error::StartError;

pub async fn prepare(db: &Db, config: &Config) -> Result<(), StartError> {
    preflight::check_pooler(db).await?;
    let client = db.client().await.map_err(|e| StartError(e.to_string()))?;
    preflight::check(&client, config).await?;
    let mut dedicated = db.dedicated().await.map_err(|e| StartError(e.to_string()))?;
    migrations::run(&mut dedicated).await?;
    preflight::prepare_stream(&client, config).await?;
    Ok(())
}
