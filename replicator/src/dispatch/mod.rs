//! Dispatch: from a batch of decoded row changes to what each hub must deliver. Which
//! subscriptions each change matches (event and filters), what RLS lets each subscriber see (one
//! query per table and auth context for the whole batch), the payloads, and one batch per hub.
//! The pipeline hands the result to the sink, and confirms the position once the sink is done.
//!
//! - [`matching`]: what each matched subscriber may see: error rows, visible, or visible if RLS
//!   lets it (checked in one query per table and auth context).
//! - [`policies`]: which subscribers could see a row, learnt from policies `column = claim`.
//! - [`tables`]: catalog facts per table and role, and the batched visibility query.
//! - [`payload`]: the `data` of a `postgres_changes` message.
//! - [`batches`]: the per-hub batches built from the matches.

mod batches;
mod matching;
pub mod payload;
mod policies;
mod tables;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_shared::filter::{all_pass, Cell};
use sluice_shared::internal::ChangeBatch;
use tokio_postgres::Client;

use crate::db::Db;
use crate::source::change::RowChange;
use crate::stats::Stats;
use crate::subscriptions::registry::Registry;
use batches::build_batches;
use matching::{judge_and_check, Hit, Verdict};
use tables::Tables;

pub struct Dispatcher {
    registry: Arc<Registry>,
    db: Arc<Db>,
    stats: Arc<Stats>,
    /// This stream's identity in batches (`{system_identifier}:{slot}`), scoping hubs' positions.
    stream: String,
    tables: Tables,
    candidates: policies::Candidates,
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
            candidates: policies::Candidates::default(),
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
        let result = judge_and_check(
            &mut self.tables,
            &mut self.candidates,
            conn,
            batch,
            &mut hits,
            &self.stats,
        )
        .await;
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
