//! Storing a channel's `postgres_changes` bindings (hub → replicator): each binding is
//! parsed (`sluice_shared::bindings`), checked against the database (tables in the
//! publication, columns, filter values castable to the column types, `in` lists, the role), and
//! stored in `sluice.subscriptions` so a replicator restart loses none. Answers carry the
//! client-visible ids, or the exact `system` error text the client must see.

use serde_json::{json, Map, Value};
use sluice_shared::bindings::{self, binding_id, params_to_log, SubscriptionParams};
use sluice_shared::filter::{Condition, Op};
use sluice_shared::texts;
use tokio_postgres::{GenericClient, Transaction};

use super::registry::{self, ChannelKey, Registry, Sub};

/// Upstream's limit on `in` lists.
const MAX_IN_VALUES: usize = 100;

/// What a registration asks for: the bindings of one channel of one socket, with the claims of
/// that channel's token.
pub struct Registration<'a> {
    pub publication: &'a str,
    pub hub: &'a str,
    pub socket: &'a str,
    pub topic: &'a str,
    pub claims: &'a Map<String, Value>,
    pub bindings: &'a [Map<String, Value>],
}

/// A refusal the client sees as its `system` message (`extension: postgres_changes`).
#[derive(Debug, PartialEq)]
pub struct Refused(pub String);

/// What a registration stored: the ids in request order, and the subscriptions for the registry.
pub struct Registered {
    pub ids: Vec<u64>,
    pub subs: Vec<(u32, Sub)>,
}

/// Replaces the channel's subscriptions with these bindings.
pub async fn register(
    tx: &Transaction<'_>,
    reg: &Registration<'_>,
) -> Result<Result<Registered, Refused>, tokio_postgres::Error> {
    remove(tx, reg.hub, reg.socket, Some(reg.topic)).await?;
    let role = reg.claims.get("role").and_then(Value::as_str).unwrap_or("anon");
    let mut registered = Registered {
        ids: Vec::with_capacity(reg.bindings.len()),
        subs: Vec::new(),
    };
    for binding in reg.bindings {
        let params = match bindings::parse(binding) {
            Ok(params) => params,
            Err(text) => return Ok(Err(Refused(text))),
        };
        let id = binding_id(binding);
        let tables = tx
            .query(
                "select format('%I.%I', schemaname, tablename)::regclass::oid
                 from pg_publication_tables
                 where pubname = $1
                   and schemaname like (case $2 when '*' then '%' else $2 end) escape ''
                   and tablename like (case $3 when '*' then '%' else $3 end) escape ''",
                &[&reg.publication, &params.schema, &params.table],
            )
            .await?;
        if tables.is_empty() {
            return Ok(Err(Refused(texts::unable_to_subscribe(&params_to_log(&params)))));
        }
        for row in tables {
            let relid: u32 = row.get(0);
            let filters = match check(tx, relid, role, &params).await? {
                Ok(filters) => filters,
                Err(problem) => return Ok(Err(exception(&params, &problem))),
            };
            let row = tx
                .query_one(
                    &format!(
                        "insert into sluice.subscriptions (hub, socket, topic, binding_id, relid, action, filters, select_columns, claims, claims_role)
                         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::regrole)
                         returning {}",
                        registry::COLUMNS
                    ),
                    &[
                        &reg.hub,
                        &reg.socket,
                        &reg.topic,
                        &(id as i64),
                        &relid,
                        &params.action.as_str(),
                        &Value::Array(filters),
                        &params.select,
                        &Value::Object(reg.claims.clone()),
                        &role,
                    ],
                )
                .await?;
            match registry::sub_from_row(&row) {
                Ok(sub) => registered.subs.push(sub),
                Err(problem) => return Ok(Err(exception(&params, &problem))),
            }
        }
        registered.ids.push(id);
    }
    Ok(Ok(registered))
}

/// Upstream's refusal when the database rejects a subscription, with Postgres's reason.
fn exception(params: &SubscriptionParams, problem: &str) -> Refused {
    Refused(texts::subscription_exception(&params_to_log(params), problem))
}

/// Whether `role` is a Postgres role (claims name the role RLS sees rows as).
async fn role_exists(db: &impl GenericClient, role: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(db
        .query_opt("select 1 from pg_roles where rolname = $1", &[&role])
        .await?
        .is_some())
}

/// The filters as stored (`{column, op, negate, values}`, values canonical), or why the bindings
/// cannot apply to table `relid` (a message as Postgres would word it).
async fn check(
    db: &impl GenericClient,
    relid: u32,
    role: &str,
    params: &SubscriptionParams,
) -> Result<Result<Vec<Value>, String>, tokio_postgres::Error> {
    if !role_exists(db, role).await? {
        return Ok(Err(format!("role \"{role}\" does not exist")));
    }
    let columns = params
        .filters
        .iter()
        .map(|f| f.column.as_str())
        .chain(params.select.iter().flatten().map(String::as_str));
    for column in columns {
        let known = db
            .query_opt(
                "select 1 from pg_attribute where attrelid = $1 and attname = $2 and attnum > 0 and not attisdropped",
                &[&relid, &column],
            )
            .await?;
        if known.is_none() {
            return Ok(Err(format!("invalid column for filter {column}")));
        }
    }
    let mut stored = Vec::with_capacity(params.filters.len());
    for filter in &params.filters {
        if filter.op == "in" {
            let count = filter
                .value
                .trim_matches(['{', '}'])
                .split(',')
                .filter(|s| !s.is_empty())
                .count();
            if count > MAX_IN_VALUES {
                return Ok(Err(format!(
                    "too many values for `in` filter on {}: {count} (at most {MAX_IN_VALUES})",
                    filter.column
                )));
            }
        }
        let values = if filter.op == "is" {
            vec![filter.value.clone()] // a keyword, checked below
        } else {
            // The value must read as the column's type (its array type for `in`).
            let row = db
                .query_one(
                    "select sluice.cast_error($3, typ), case when sluice.cast_error($3, typ) is null then sluice.canonical($3, typ) end
                     from (select case when $4 then t.typarray else t.oid end::regtype as typ
                           from pg_attribute a join pg_type t on t.oid = a.atttypid
                           where a.attrelid = $1 and a.attname = $2) c",
                    &[&relid, &filter.column, &filter.value, &(filter.op == "in")],
                )
                .await?;
            if let Some(problem) = row.get::<_, Option<String>>(0) {
                return Ok(Err(problem));
            }
            row.get::<_, Option<Vec<String>>>(1).unwrap_or_default()
        };
        let op = Op::parse(&filter.op).unwrap_or(Op::Eq);
        if let Err(problem) = Condition::new(&filter.column, op, filter.negate, values.clone()) {
            return Ok(Err(problem));
        }
        stored.push(json!({"column": filter.column, "op": filter.op, "value": filter.value, "negate": filter.negate, "values": values}));
    }
    Ok(Ok(stored))
}

/// Gives a channel's subscriptions new claims (and their role); the updated subscriptions.
pub async fn reauthorize(
    tx: &Transaction<'_>,
    channel: &ChannelKey,
    claims: &Map<String, Value>,
) -> Result<Result<Vec<(u32, Sub)>, Refused>, tokio_postgres::Error> {
    let role = claims.get("role").and_then(Value::as_str).unwrap_or("anon");
    if !role_exists(tx, role).await? {
        return Ok(Err(Refused(format!("role \"{role}\" does not exist"))));
    }
    let rows = tx
        .query(
            &format!(
                "update sluice.subscriptions set claims = $4, claims_role = $5::text::regrole
                 where hub = $1 and socket = $2 and topic = $3 returning {}",
                registry::COLUMNS
            ),
            &[
                &channel.hub,
                &channel.socket,
                &channel.topic,
                &Value::Object(claims.clone()),
                &role,
            ],
        )
        .await?;
    let mut subs = Vec::with_capacity(rows.len());
    for row in &rows {
        match registry::sub_from_row(row) {
            Ok(sub) => subs.push(sub),
            Err(problem) => return Ok(Err(Refused(problem))),
        }
    }
    Ok(Ok(subs))
}

/// Removes a channel's subscriptions, or all of a socket's when `topic` is `None`.
pub async fn remove(
    db: &impl GenericClient,
    hub: &str,
    socket: &str,
    topic: Option<&str>,
) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        "delete from sluice.subscriptions where hub = $1 and socket = $2 and ($3::text is null or topic = $3)",
        &[&hub, &socket, &topic],
    )
    .await
}

/// Loads every stored subscription into the registry; how many.
pub async fn load(db: &impl GenericClient, registry: &Registry) -> Result<usize, tokio_postgres::Error> {
    let rows = db
        .query(&format!("select {} from sluice.subscriptions", registry::COLUMNS), &[])
        .await?;
    let mut per_channel: std::collections::BTreeMap<ChannelKey, Vec<(u32, Sub)>> = Default::default();
    for row in &rows {
        match registry::sub_from_row(row) {
            Ok((relid, sub)) => per_channel.entry(sub.channel.clone()).or_default().push((relid, sub)),
            Err(problem) => tracing::warn!("skipping a stored subscription: {problem}"),
        }
    }
    for (channel, subs) in per_channel {
        registry.replace_channel(&channel, subs);
    }
    Ok(rows.len())
}
