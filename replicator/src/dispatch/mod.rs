//! Dispatch: from a batch of decoded row changes to what each hub must deliver. Which
//! subscriptions each change matches (event and filters), what RLS lets each subscriber see (one
//! query per table and auth context for the whole batch), the payloads, and one batch per hub.
//! The pipeline hands the result to the sink, and confirms the position once the sink is done.
//!
//! - [`tables`]: catalog facts per table and role, and the batched RLS query.
//! - [`payload`]: the `data` of a `postgres_changes` message.
//! - [`batches`]: the per-hub batches built from the matches.

mod batches;
pub mod payload;
mod tables;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use sluice_shared::bindings::Action;
use sluice_shared::filter::{all_pass, Cell};
use sluice_shared::internal::ChangeBatch;
use tokio_postgres::Client;
use tracing::warn;

use crate::db::Db;
use crate::source::change::RowChange;
use crate::stats::Stats;
use crate::subscriptions::registry::{Registry, Sub};
use batches::build_batches;
use tables::{TableInfo, Tables};

pub struct Dispatcher {
    registry: Arc<Registry>,
    db: Arc<Db>,
    stats: Arc<Stats>,
    /// This stream's identity in batches (`{system_identifier}:{slot}`), scoping hubs' positions.
    stream: String,
    tables: Tables,
    /// The connection catalog and RLS queries run on (transactions need one of their own).
    conn: Option<Client>,
}

/// What a matched subscriber gets of a change.
#[derive(Debug)]
enum Verdict {
    /// An error row (400, 401) instead of the change.
    Error(&'static str),
    Visible,
    /// Visible if RLS lets the subscriber see the row (by the change's key).
    IfVisible,
}

/// One subscription a change matched, and what its subscriber may see.
#[derive(Debug)]
struct Hit {
    change: usize,
    sub: Arc<Sub>,
    verdict: Verdict,
}

/// An auth context on a table: (table, role, claims).
type Context = (u32, Arc<str>, Arc<str>);
/// Per context, the keys RLS lets it see.
type Visible = HashMap<Context, HashSet<Vec<String>>>;
/// Per change of the batch (by index) on an RLS table, its primary-key texts if it has them all.
type Keys = HashMap<usize, Option<Vec<String>>>;

impl Dispatcher {
    pub fn new(registry: Arc<Registry>, db: Arc<Db>, stats: Arc<Stats>, stream: String) -> Dispatcher {
        Dispatcher {
            registry,
            db,
            stats,
            stream,
            tables: Tables::default(),
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
        let mut hits = self.match_subscriptions(batch);
        if hits.is_empty() {
            return Ok(BTreeMap::new());
        }
        if self.conn.as_ref().is_none_or(Client::is_closed) {
            self.conn = Some(self.db.dedicated().await?);
        }
        let conn = self.conn.as_mut().expect("just opened");
        let result = judge_and_check(&mut self.tables, conn, batch, &mut hits, &self.stats).await;
        let (visible, keys) = match result {
            Ok(found) => found,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        Ok(build_batches(
            &self.stream,
            batch,
            &hits,
            (&visible, &keys),
            &self.tables,
        ))
    }

    /// Subscriptions whose event and filters a change passes.
    fn match_subscriptions(&self, batch: &[RowChange]) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (index, change) in batch.iter().enumerate() {
            let Some(subs) = self.registry.for_table(change.relation.relid) else {
                continue;
            };
            let relation = &change.relation;
            let cell = |column: &str| match relation.column(column) {
                Some(i) => (relation.columns[i].type_oid, change.cell(i)),
                None => (0, Cell::Absent),
            };
            for sub in subs.iter() {
                if sub.wants(change.action) && all_pass(&sub.conditions, cell) {
                    hits.push(Hit {
                        change: index,
                        sub: sub.clone(),
                        verdict: Verdict::Visible,
                    });
                }
            }
        }
        hits
    }
}

/// Decides each hit's verdict from the catalog, then runs the batch's RLS checks: one query per
/// (table, role, claims) over the keys of all its changes. Returns the visible keys per check.
async fn judge_and_check(
    tables: &mut Tables,
    conn: &mut Client,
    batch: &[RowChange],
    hits: &mut [Hit],
    stats: &Stats,
) -> Result<(Visible, Keys), tokio_postgres::Error> {
    // Per context, the changes whose keys it must check; each change's key, computed once.
    let mut checks: HashMap<Context, Vec<usize>> = HashMap::new();
    let mut keys: Keys = HashMap::new();
    for hit in hits.iter_mut() {
        let change = &batch[hit.change];
        let info = tables.info(conn, &change.relation).await?;
        let selectable = tables.selectable(conn, &change.relation, &hit.sub.role).await?;
        if change.action == Action::Delete {
            continue; // deletes are not RLS-checked (upstream)
        }
        if info.pk_columns.is_empty() {
            hit.verdict = Verdict::Error(payload::NO_PRIMARY_KEY);
            continue;
        }
        if info.pk_columns.iter().any(|&i| !selectable[i]) {
            hit.verdict = Verdict::Error(payload::UNAUTHORIZED);
            continue;
        }
        if info.rls {
            if keys
                .entry(hit.change)
                .or_insert_with(|| change.key(&info.pk_columns))
                .is_none()
            {
                hit.verdict = Verdict::Error(payload::NO_PRIMARY_KEY);
                continue;
            }
            let context = (change.relation.relid, hit.sub.role.clone(), hit.sub.claims.clone());
            let changes = checks.entry(context).or_default();
            if changes.last() != Some(&hit.change) {
                changes.push(hit.change);
            }
            hit.verdict = Verdict::IfVisible;
        }
    }
    let mut visible = HashMap::new();
    if checks.is_empty() {
        return Ok((visible, keys));
    }
    let tx = conn.transaction().await?;
    for ((relid, role, claims), changes) in checks {
        let info: Arc<TableInfo> = tables.cached(relid).expect("looked up while judging");
        let distinct: HashSet<&Vec<String>> = changes.iter().filter_map(|c| keys[c].as_ref()).collect();
        let to_check: Vec<Vec<String>> = distinct.into_iter().cloned().collect();
        Stats::count(&stats.rls_queries, 1);
        // A failing policy (or a role that vanished) hides the rows from that context only.
        tx.execute("savepoint rls", &[]).await?;
        match tables::visible_keys(&tx, &info, &role, &claims, &to_check).await {
            Ok(seen) => {
                tx.execute("release savepoint rls", &[]).await?;
                visible.insert((relid, role, claims), seen);
            }
            Err(e) if e.as_db_error().is_some() => {
                warn!(
                    "RLS check on {} as {role} failed: {e}; the rows stay hidden from it",
                    info.quoted_name
                );
                tx.execute("rollback to savepoint rls", &[]).await?;
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    Ok((visible, keys))
}
