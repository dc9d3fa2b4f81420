//! Dispatch: from a batch of decoded row changes to what each hub must deliver. Who each change
//! could reach (the table's subscriptions, narrowed through its RLS policies), which of them it
//! matches (event and filters), what RLS lets each see (one query per table and auth context for
//! the whole batch, for the candidates that need one), the payloads, and one batch per hub. The
//! pipeline hands the result to the sink, and confirms the position once the sink is done.
//!
//! - [`audience`]: per table and role, which subscribers a row could reach, indexed by the claim
//!   values the policies compare rows with.
//! - [`policies`]: what a policy's text says (`column = claim`, membership, claims alone).
//! - [`matching`]: what each matched subscriber may see: error rows, visible, or visible if RLS
//!   lets it (checked in one query per table and auth context).
//! - [`tables`]: catalog facts per table and role, and the batched visibility query.
//! - [`payload`]: the `data` of a `postgres_changes` message.
//! - [`batches`]: the per-hub batches built from the matches.

mod audience;
mod batches;
pub mod helpers;
mod matching;
pub mod payload;
pub mod policies;
mod sql;
mod tables;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sluice_shared::filter::{all_pass, Cell};
use sluice_shared::internal::ChangeBatch;
use tokio_postgres::Client;

use crate::db::Db;
use crate::source::change::RowChange;
use crate::stats::Stats;
use crate::subscriptions::registry::Registry;
use audience::{Audience, Audiences, Memberships};
use batches::build_batches;
use matching::Hit;
use tables::Tables;

pub struct Dispatcher {
    registry: Arc<Registry>,
    db: Arc<Db>,
    stats: Arc<Stats>,
    /// This stream's identity in batches (`{system_identifier}:{slot}`), scoping hubs' positions.
    stream: String,
    tables: Tables,
    audiences: Audiences,
    /// The connection catalog and RLS queries run on (transactions need one of their own).
    conn: Option<Client>,
}

impl Dispatcher {
    pub fn new(registry: Arc<Registry>, db: Arc<Db>, stats: Arc<Stats>, stream: String) -> Dispatcher {
        Dispatcher {
            registry,
            db,
            stats,
            stream,
            tables: Tables::default(),
            audiences: Audiences::default(),
            conn: None,
        }
    }

    /// The table's definition changed (a new Relation message): drop cached catalog facts.
    pub fn relation_changed(&mut self, relid: u32) {
        self.tables.invalidate(relid);
    }

    /// This stream's identity (`{system_identifier}:{slot}`).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Whether anyone subscribed to the table (changes of other tables are not kept).
    pub fn wants(&self, relid: u32) -> bool {
        self.registry.for_table(relid).is_some()
    }

    /// Every subscriber's share of `batch`, as one batch per hub. `Err` (the database failed)
    /// means nothing of the batch may be confirmed.
    pub async fn dispatch(
        &mut self,
        batch: &[RowChange],
    ) -> Result<BTreeMap<String, ChangeBatch>, tokio_postgres::Error> {
        if !batch.iter().any(|c| self.wants(c.relation.relid)) {
            return Ok(BTreeMap::new());
        }
        if self.conn.as_ref().is_none_or(Client::is_closed) {
            self.conn = Some(self.db.dedicated().await?);
        }
        let conn = self.conn.as_mut().expect("just opened");
        let result = Self::decide(
            conn,
            &mut self.audiences,
            &mut self.tables,
            &self.registry,
            batch,
            &self.stats,
        )
        .await;
        match result {
            Ok((hits, visible, keys)) => Ok(build_batches(
                &self.stream,
                batch,
                &hits,
                (&visible, &keys),
                &self.tables,
            )),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// Who gets what of `batch`: the audiences (catalog, claim values), then in one snapshot the
    /// memberships the policies refer to and the RLS checks the candidates still need.
    async fn decide(
        conn: &mut Client,
        audiences: &mut Audiences,
        tables: &mut Tables,
        registry: &Registry,
        batch: &[RowChange],
        stats: &Stats,
    ) -> Result<(Vec<Hit>, matching::Visible, matching::Keys), tokio_postgres::Error> {
        let audiences = audiences.prepare(conn, tables, registry, batch, stats).await?;
        // One snapshot for the membership reads and the checks, begun only if either is needed
        // (memberships are read before matching, checks after). An error drops the connection,
        // and the open transaction with it.
        let mut in_snapshot = false;
        let members = if audience::reads_memberships(&audiences) {
            begin_snapshot(conn, &mut in_snapshot).await?;
            audience::memberships(conn, &audiences, batch, stats).await?
        } else {
            Memberships::new()
        };
        let mut hits = match_subscriptions(batch, &audiences, &members, stats);
        let (checks, keys) = matching::judge(tables, batch, &mut hits);
        let mut visible = matching::Visible::new();
        if !checks.is_empty() {
            begin_snapshot(conn, &mut in_snapshot).await?;
            visible = matching::check(tables, conn, checks, &keys, stats).await?;
        }
        if in_snapshot {
            conn.batch_execute("commit").await?;
        }
        Ok((hits, visible, keys))
    }
}

/// Begins, unless `open` says it is already, a read-only transaction whose reads all see one
/// snapshot.
async fn begin_snapshot(conn: &Client, open: &mut bool) -> Result<(), tokio_postgres::Error> {
    if !*open {
        conn.batch_execute("begin isolation level repeatable read read only")
            .await?;
        *open = true;
    }
    Ok(())
}

/// The subscriptions each change could reach whose event and filters it passes.
fn match_subscriptions(
    batch: &[RowChange],
    audiences: &HashMap<u32, Arc<Audience>>,
    members: &Memberships,
    stats: &Stats,
) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut pairs = [0u64; 3]; // per RlsPath, counted once for the batch
    for (index, change) in batch.iter().enumerate() {
        let Some(audience) = audiences.get(&change.relation.relid) else {
            continue;
        };
        let relation = &change.relation;
        let cell = |column: &str| match relation.column(column) {
            Some(i) => (relation.columns[i].type_oid, change.cell(i)),
            None => (0, Cell::Absent),
        };
        audience.reach(change, members, |sub, verdict, path| {
            if sub.wants(change.action) && all_pass(&sub.conditions, cell) {
                if let Some(path) = path {
                    pairs[path as usize] += 1;
                }
                hits.push(Hit {
                    change: index,
                    sub: sub.clone(),
                    verdict,
                });
            }
        });
    }
    for (counter, n) in stats.rls_pairs.iter().zip(pairs) {
        Stats::count(counter, n);
    }
    hits
}
