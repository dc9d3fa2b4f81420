//! What each matched subscriber may see of a change: an error row (no primary key, a key column
//! it may not select), the change, or the change if RLS lets it see the row. The last kind is
//! decided for the whole batch at once: one query per (table, role, claims) over the keys of the
//! changes it could see — all of them, unless the table's policies narrow them to the rows whose
//! column equals the subscriber's claim (`policies`): then a change only its owner may see costs
//! about one check, however many users are subscribed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sluice_shared::bindings::Action;
use tokio_postgres::Client;
use tracing::warn;

use super::payload;
use super::policies::{Candidates, Equality, Narrowing, Wanted};
use super::tables::{self, TableInfo, Tables};
use crate::source::change::RowChange;
use crate::stats::Stats;
use crate::subscriptions::registry::Sub;

/// What a matched subscriber gets of a change.
#[derive(Debug)]
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

/// Decides each hit's verdict from the catalog, then runs the batch's RLS checks: one query per
/// (table, role, claims) over the keys of all its changes. Returns the visible keys per check.
pub(super) async fn judge_and_check(
    tables: &mut Tables,
    candidates: &mut Candidates,
    conn: &mut Client,
    batch: &[RowChange],
    hits: &mut [Hit],
    stats: &Stats,
) -> Result<(Visible, Keys), tokio_postgres::Error> {
    // Per context, the changes whose keys it must check; each change's key, computed once.
    let mut checks: HashMap<Context, Vec<usize>> = HashMap::new();
    let mut keys: Keys = HashMap::new();
    // Per (table, role), how its policies narrow the rows a subscriber could see.
    let mut narrowings: HashMap<(u32, Arc<str>), Narrowing> = HashMap::new();
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
            let table_role = (change.relation.relid, hit.sub.role.clone());
            if let std::collections::hash_map::Entry::Vacant(entry) = narrowings.entry(table_role) {
                let narrowing = candidates
                    .narrowing(conn, &change.relation, &info.typnames, &hit.sub.role)
                    .await?;
                entry.insert(narrowing);
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
    // The claims values the narrowing policies need, computed once per subscriber.
    let wanted: Wanted = checks
        .keys()
        .filter_map(|(relid, role, claims)| {
            let equalities = narrowings[&(*relid, role.clone())].as_ref()?;
            let info = tables.cached(*relid)?;
            let expressions = equalities
                .iter()
                .map(|(column, eq)| (eq.expression.clone(), info.column_type(*column).to_string()))
                .collect();
            Some((role.clone(), claims.clone(), expressions))
        })
        .collect();
    if !wanted.is_empty() {
        Stats::count(&stats.rls_queries, candidates.evaluate(conn, wanted).await?);
    }
    let tx = conn.transaction().await?;
    for ((relid, role, claims), changes) in checks {
        let info: Arc<TableInfo> = tables.cached(relid).expect("looked up while judging");
        let changes = match &narrowings[&(relid, role.clone())] {
            None => changes,
            Some(equalities) => {
                let value =
                    |column: usize, expression: &str| candidates.value(&claims, expression, info.column_type(column));
                changes
                    .into_iter()
                    .filter(|&c| could_see(&batch[c], equalities, value))
                    .collect()
            }
        };
        if changes.is_empty() {
            continue;
        }
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
                    "RlsPolicyError: RLS check on {} as {role} failed: {e}; the rows stay hidden from it",
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

/// Whether a subscriber could see a change's row under permissive policies `column = value`:
/// some policy's column equals the subscriber's value. Unknown (a value not computed, a column
/// not sent) counts as could; NULL on either side as not (`=` is never true with NULL).
fn could_see<'a>(
    change: &RowChange,
    equalities: &[(usize, Equality)],
    value: impl Fn(usize, &str) -> Option<&'a Option<String>>,
) -> bool {
    use sluice_shared::filter::Cell;
    equalities.iter().any(
        |(column, eq)| match (change.cell(*column), value(*column, &eq.expression)) {
            (_, None) | (Cell::Absent, _) => true,
            (Cell::Text(cell), Some(Some(v))) => cell == v,
            (Cell::Text(_), Some(None)) | (Cell::Null, Some(_)) => false,
        },
    )
}
