//! From decoded row changes to deliveries: which subscriptions each change matches (event and
//! filters), what RLS lets each subscriber see (one query per table and auth context for the
//! whole batch), the payloads, and one request per hub. Called by the stream for each batch; the
//! stream confirms the batch's position only after this returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::Value;
use sluice_shared::filter::{all_pass, Cell};
use sluice_shared::internal::{Access, Change, ChangeBatch, ChangePayload, DbBroadcasts, DbMessage, Recipient};
use sluice_shared::subscription::Action;
use tokio_postgres::Client;
use tracing::{debug, warn};

use crate::broadcasts::DbBroadcast;
use crate::db::Db;
use crate::delivery::Gateway;
use crate::payload::{self, RowChange, View};
use crate::registry::{ChannelKey, Registry, Sub};
use crate::stream::Stats;
use crate::subscriptions;
use crate::tables::{self, TableInfo, Tables};

pub struct Dispatcher {
    pub registry: Arc<Registry>,
    pub db: Arc<Db>,
    pub gateway: Gateway,
    pub stats: Arc<Stats>,
    /// This stream's identity in batches (`{system_identifier}:{slot}`), scoping hubs' positions.
    stream: String,
    tables: Tables,
    /// The connection catalog and RLS queries run on (transactions need one of their own).
    conn: Option<Client>,
}

/// What a matched subscriber gets of a change.
enum Verdict {
    /// An error row (400, 401) instead of the change.
    Error(&'static str),
    Visible,
    /// Visible if RLS lets the subscriber see the row (by the change's key).
    IfVisible,
}

/// One subscription a change matched, and what its subscriber may see.
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
    pub fn new(
        registry: Arc<Registry>,
        db: Arc<Db>,
        gateway: Gateway,
        stats: Arc<Stats>,
        stream: String,
    ) -> Dispatcher {
        Dispatcher {
            registry,
            db,
            gateway,
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

    /// Delivers every subscriber's share of `batch`. Returns once every hub concerned answered;
    /// `Err` (the database failed) means nothing of the batch may be confirmed.
    pub async fn dispatch(&mut self, batch: &[RowChange]) -> Result<(), tokio_postgres::Error> {
        let mut hits = self.match_subscriptions(batch);
        if hits.is_empty() {
            return Ok(());
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
        let per_hub = build_batches(&self.stream, batch, &hits, (&visible, &keys), &mut self.tables);
        let deliveries: u64 = per_hub
            .values()
            .flat_map(|b| &b.changes)
            .flat_map(|c| &c.payloads)
            .map(|p| p.to.len() as u64)
            .sum();
        let (stats, gateway) = (&self.stats, &self.gateway);
        let sends = per_hub.iter().map(|(hub, batch)| async move {
            let receipt = gateway
                .deliver(hub, batch, || {
                    stats.push_errors.fetch_add(1, Ordering::Relaxed);
                })
                .await;
            (hub, receipt)
        });
        let receipts = join_all(sends).await;
        self.stats.deliveries.fetch_add(deliveries, Ordering::Relaxed);
        for (hub, receipt) in receipts {
            for gone in receipt.gone {
                debug!(
                    "{hub} says {}/{} is gone; dropping its subscriptions",
                    gone.socket,
                    gone.topic.as_deref().unwrap_or("*")
                );
                self.registry.remove(&gone.hub, &gone.socket, gone.topic.as_deref());
                let db = self.db.clone();
                tokio::spawn(async move {
                    if let Ok(client) = db.client().await {
                        let removed =
                            subscriptions::remove(&*client, &gone.hub, &gone.socket, gone.topic.as_deref()).await;
                        if let Err(e) = removed {
                            warn!("removing subscriptions of a gone channel: {e}");
                        }
                    }
                });
            }
        }
        Ok(())
    }

    /// Hands database broadcasts to their channels, one request per channel (in order within
    /// each), all channels at once; returns once every one was accepted.
    pub async fn relay_broadcasts(&self, broadcasts: Vec<DbBroadcast>) {
        let mut per_channel: BTreeMap<(String, Access), Vec<DbMessage>> = BTreeMap::new();
        for b in broadcasts {
            per_channel.entry((b.topic, b.access)).or_default().push(b.message);
        }
        let stats = &self.stats;
        let sends = per_channel.into_iter().map(|((topic, access), messages)| async move {
            let batch = DbBroadcasts {
                stream: self.stream.clone(),
                topic,
                access,
                messages,
            };
            self.gateway
                .relay(&batch, || {
                    stats.push_errors.fetch_add(1, Ordering::Relaxed);
                })
                .await;
            self.stats
                .db_broadcasts
                .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        });
        join_all(sends).await;
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
        stats.rls_queries.fetch_add(1, Ordering::Relaxed);
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

/// The per-hub batches: for each change, one payload per distinct view (role and `select`), each
/// with the channels that see it and the ids of their matched bindings.
fn build_batches(
    stream: &str,
    batch: &[RowChange],
    hits: &[Hit],
    (visible, keys): (&Visible, &Keys),
    tables: &mut Tables,
) -> BTreeMap<String, ChangeBatch> {
    // change -> view key -> channel -> ids
    type Views<'a> =
        BTreeMap<(Option<&'static str>, &'a str, Option<&'a [String]>), BTreeMap<&'a ChannelKey, Vec<u64>>>;
    let mut per_change: BTreeMap<usize, Views> = BTreeMap::new();
    for hit in hits {
        let change = &batch[hit.change];
        let shown = match &hit.verdict {
            Verdict::Error(_) | Verdict::Visible => true,
            Verdict::IfVisible => {
                let context = (change.relation.relid, hit.sub.role.clone(), hit.sub.claims.clone());
                let key = keys.get(&hit.change).and_then(Option::as_ref);
                key.is_some_and(|key| visible.get(&context).is_some_and(|seen| seen.contains(key)))
            }
        };
        if !shown {
            continue;
        }
        let view_key = match hit.verdict {
            Verdict::Error(error) => (Some(error), "", None),
            _ => (None, &*hit.sub.role, hit.sub.select.as_deref()),
        };
        let ids = per_change
            .entry(hit.change)
            .or_default()
            .entry(view_key)
            .or_default()
            .entry(&hit.sub.channel)
            .or_default();
        if !ids.contains(&hit.sub.binding_id) {
            ids.push(hit.sub.binding_id);
        }
    }
    let mut per_hub: BTreeMap<String, ChangeBatch> = BTreeMap::new();
    for (index, views) in per_change {
        let change = &batch[index];
        let mut payloads_per_hub: BTreeMap<&str, Vec<ChangePayload>> = BTreeMap::new();
        for ((error, role, select), channels) in views {
            let data: Value = match error {
                Some(error) => payload::error_data(change, error),
                None => {
                    let info = tables.cached(change.relation.relid);
                    let selectable = tables.cached_selectable(change.relation.relid, role);
                    match (info, selectable) {
                        (Some(info), Some(selectable)) => payload::data(
                            change,
                            &View {
                                typnames: &info.typnames,
                                pk: &info.pk,
                                selectable: &selectable,
                                select,
                                rls: info.rls,
                            },
                        ),
                        _ => continue,
                    }
                }
            };
            let mut per_hub_recipients: BTreeMap<&str, Vec<Recipient>> = BTreeMap::new();
            for (channel, ids) in channels {
                per_hub_recipients.entry(&channel.hub).or_default().push(Recipient {
                    socket: channel.socket.clone(),
                    topic: channel.topic.clone(),
                    ids,
                });
            }
            for (hub, to) in per_hub_recipients {
                payloads_per_hub
                    .entry(hub)
                    .or_default()
                    .push(ChangePayload { data: data.clone(), to });
            }
        }
        for (hub, payloads) in payloads_per_hub {
            let hub_batch = per_hub.entry(hub.to_string()).or_insert_with(|| ChangeBatch {
                stream: stream.to_string(),
                changes: Vec::new(),
            });
            hub_batch.changes.push(Change {
                lsn: change.lsn,
                seq: change.seq,
                payloads,
            });
        }
    }
    per_hub
}
