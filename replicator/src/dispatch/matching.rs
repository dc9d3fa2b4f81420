//! What each matched subscriber may see of a change: an error row (no primary key, a key column
//! it may not select), the change, or the change if RLS lets it see the row. The last kind is
//! decided for the whole batch at once: one query per (table, role, claims) over the keys of the
//! changes its subscriber could see (`audience` has narrowed them to the candidates).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::FutureExt;
use sluice_shared::bindings::Action;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tracing::warn;

use super::payload;
use super::tables::{self, TableInfo, Tables};
use crate::source::change::RowChange;
use crate::stats::Stats;
use crate::subscriptions::registry::Sub;

/// What a matched subscriber gets of a change.
#[derive(Clone, Copy, Debug)]
pub(super) enum Verdict {
    /// An error row (400, 401) instead of the change.
    Error(&'static str),
    Visible,
    /// Visible if RLS lets the subscriber see the row (by the change's key).
    IfVisible,
}

/// One subscription a change matched, and what its subscriber may see.
#[derive(Debug)]
pub(super) struct Hit {
    pub change: usize,
    pub sub: Arc<Sub>,
    pub verdict: Verdict,
}

/// An auth context on a table: (table, role, claims).
pub(super) type Context = (u32, Arc<str>, Arc<str>);
/// Per context, the keys RLS lets it see.
pub(super) type Visible = HashMap<Context, HashSet<Vec<String>>>;
/// Per change of the batch (by index) on an RLS table, its primary-key texts if it has them all.
pub(super) type Keys = HashMap<usize, Option<Vec<String>>>;

/// A table's catalog facts and the columns a role may select there.
type Facts = (Arc<TableInfo>, Arc<Vec<bool>>);

/// Per context, the changes (by index) whose keys it must check.
pub(super) type Checks = HashMap<Context, Vec<usize>>;

/// Settles each hit's verdict from the cached catalog facts (`audience` cached them for every
/// table and role of the batch): error rows, and the RLS checks the rest still need.
pub(super) fn judge(tables: &Tables, batch: &[RowChange], hits: &mut [Hit]) -> (Checks, Keys) {
    let mut checks = Checks::new();
    let mut keys = Keys::new();
    // The facts of the previous hit's table and role: consecutive hits mostly share them.
    let mut facts: Option<(u32, Arc<str>, Facts)> = None;
    for hit in hits.iter_mut() {
        let change = &batch[hit.change];
        let relid = change.relation.relid;
        if facts
            .as_ref()
            .is_none_or(|(id, role, ..)| *id != relid || *role != hit.sub.role)
        {
            facts = tables
                .cached(relid)
                .zip(tables.cached_selectable(relid, &hit.sub.role))
                .map(|facts| (relid, hit.sub.role.clone(), facts));
        }
        let Some((_, _, (info, selectable))) = &facts else {
            hit.verdict = Verdict::Error(payload::UNAUTHORIZED); // unreachable: looked up before
            continue;
        };
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
        if !info.rls {
            continue;
        }
        if keys
            .entry(hit.change)
            .or_insert_with(|| change.key(&info.pk_columns))
            .is_none()
        {
            hit.verdict = Verdict::Error(payload::NO_PRIMARY_KEY);
            continue;
        }
        if let Verdict::IfVisible = hit.verdict {
            let context = (relid, hit.sub.role.clone(), hit.sub.claims.clone());
            let changes = checks.entry(context).or_default();
            if changes.last() != Some(&hit.change) {
                changes.push(hit.change);
            }
        }
    }
    (checks, keys)
}

/// Sets a subscriber's role and claims for the rest of the transaction.
const SET_SUBSCRIBER: &str = "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)";
/// Checks sent at once (pipelined on the connection).
const CHECKS_AT_ONCE: usize = 500;

/// One context's check: its table's facts and the distinct keys to check.
type Check = (Context, Arc<TableInfo>, Vec<Vec<String>>);

/// Runs the batch's RLS checks inside `tx`: one query per (table, role, claims) over the keys of
/// all its changes, all sent at once. A policy that fails hides the rows from that context only:
/// then the transaction has refused the rest, and they run again one by one.
pub(super) async fn check(
    tables: &Tables,
    tx: &Client,
    checks: Checks,
    keys: &Keys,
    stats: &Stats,
) -> Result<Visible, tokio_postgres::Error> {
    let work: Vec<Check> = checks
        .into_iter()
        .map(|(context, changes)| {
            let info = tables.cached(context.0).expect("looked up while judging");
            let distinct: HashSet<&Vec<String>> = changes.iter().filter_map(|c| keys[c].as_ref()).collect();
            (context, info, distinct.into_iter().cloned().collect())
        })
        .collect();
    if work.is_empty() {
        return Ok(Visible::new());
    }
    Stats::count(&stats.rls_queries, work.len() as u64);
    tx.execute("savepoint checks", &[]).await?;
    match pipelined(tx, &work).await {
        Ok(visible) => {
            tx.execute("release savepoint checks", &[]).await?;
            Ok(visible)
        }
        Err(e) if e.as_db_error().is_some() => {
            tx.execute("rollback to savepoint checks", &[]).await?;
            one_by_one(tx, work).await
        }
        Err(e) => Err(e),
    }
}

/// Every check sent without waiting: each context's role and claims set, then its query
/// (prepared statements keep them in order).
async fn pipelined(tx: &Client, work: &[Check]) -> Result<Visible, tokio_postgres::Error> {
    let set = tx.prepare(SET_SUBSCRIBER).await?;
    // Prepared as the table's first subscriber: resolving its schema needs USAGE, which the
    // replicator's own role need not have.
    let mut statements: HashMap<u32, tokio_postgres::Statement> = HashMap::new();
    for ((relid, role, claims), info, _) in work {
        if !statements.contains_key(relid) {
            tx.execute(&set, &[&&**role, &&**claims]).await?;
            statements.insert(*relid, tx.prepare(&tables::visibility_sql(info)).await?);
        }
    }
    let mut visible = Visible::new();
    for chunk in work.chunks(CHECKS_AT_ONCE) {
        let columns: Vec<Vec<Vec<&str>>> = chunk
            .iter()
            .map(|(_, info, keys)| tables::key_columns(keys, info.pk_columns.len()))
            .collect();
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = columns
            .iter()
            .map(|c| c.iter().map(|c| c as &(dyn ToSql + Sync)).collect())
            .collect();
        let mut steps = Vec::with_capacity(chunk.len() * 2);
        for (((relid, role, claims), _, _), params) in chunk.iter().zip(&params) {
            let (set, select) = (&set, &statements[relid]);
            steps.push(async move { tx.execute(set, &[&&**role, &&**claims]).await.map(|_| None) }.boxed());
            steps.push(async move { tx.query(select, params).await.map(Some) }.boxed());
        }
        // Sent in the order polled: each context's settings just before its query.
        let answers = futures_util::future::join_all(steps).await;
        let mut answers = answers.into_iter();
        for (context, info, _) in chunk {
            answers.next().expect("a set")?;
            let rows = answers.next().expect("a query")?.expect("rows");
            visible.insert(context.clone(), tables::keys_of(&rows, info.pk_columns.len()));
        }
    }
    Ok(visible)
}

/// Each check under its own savepoint, so one failing policy hides only what it must: when a
/// context's query fails, its keys are asked one at a time (Postgres may not evaluate a failing
/// branch for one row alone: `owner = auth.uid() or id / 0 > 1`).
async fn one_by_one(tx: &Client, work: Vec<Check>) -> Result<Visible, tokio_postgres::Error> {
    let mut visible = Visible::new();
    for (context, info, keys) in work {
        let seen = match check_one(tx, &context, &info, &keys).await? {
            Some(seen) => seen,
            None if keys.len() > 1 => {
                let mut seen = HashSet::new();
                for key in keys.chunks(1) {
                    seen.extend(check_one(tx, &context, &info, key).await?.unwrap_or_default());
                }
                seen
            }
            None => continue,
        };
        visible.insert(context, seen);
    }
    Ok(visible)
}

/// One context's query over `keys` under a savepoint: `None` if its policies failed.
async fn check_one(
    tx: &Client,
    (_, role, claims): &Context,
    info: &TableInfo,
    keys: &[Vec<String>],
) -> Result<Option<HashSet<Vec<String>>>, tokio_postgres::Error> {
    let columns = tables::key_columns(keys, info.pk_columns.len());
    let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    tx.execute("savepoint rls", &[]).await?;
    tx.execute(SET_SUBSCRIBER, &[&&**role, &&**claims]).await?;
    match tx.query(&tables::visibility_sql(info), &params).await {
        Ok(rows) => {
            tx.execute("release savepoint rls", &[]).await?;
            Ok(Some(tables::keys_of(&rows, info.pk_columns.len())))
        }
        Err(e) if e.as_db_error().is_some() => {
            if let [key] = keys {
                warn!(
                    "RlsPolicyError: RLS check of {} key {key:?} as {role} failed: {e}; the row stays hidden from it",
                    info.quoted_name
                );
            }
            tx.execute("rollback to savepoint rls", &[]).await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
