//! Storing a channel's `postgres_changes` bindings (hub → replicator): each binding is
//! parsed (`sluice_shared::bindings`), checked against the database (tables in the
//! publication, columns, filter values castable to the column types, `in` lists, the role), and
//! stored in `sluice.subscriptions` so a replicator restart loses none. Answers carry the
//! client-visible ids, or the exact `system` error text the client must see.

use serde_json::{json, Map, Value};
use sluice_shared::bindings::{self, binding_id, params_to_log, SubscriptionParams};
use sluice_shared::filter::{self, Condition, Op};
use sluice_shared::texts;
use tokio_postgres::{GenericClient, Transaction};

use super::registry::{self, ChannelKey, Registry, Sub};

/// The advisory lock between registrations (shared) and tables published later (exclusive):
/// a channel's rows are not replaced while wildcard bindings take new tables.
pub const LOCK: i64 = 0x736c_7563_6501; // "sluce", 1

/// Upstream's limit on `in` lists.
const MAX_IN_VALUES: usize = 100;

/// What a registration asks for: the bindings of one channel of one socket, with the claims of
/// that channel's token.
pub struct Registration<'a> {
    pub publication: &'a str,
    pub channel: &'a ChannelKey,
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
    tx.execute("select pg_advisory_xact_lock_shared($1)", &[&LOCK]).await?;
    let channel = reg.channel;
    remove(tx, &channel.hub, &channel.socket, Some(&channel.topic)).await?;
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
        let tables = published_tables(tx, reg.publication, &params).await?;
        if tables.is_empty() {
            return Ok(Err(Refused(texts::unable_to_subscribe(&params_to_log(&params)))));
        }
        for relid in tables {
            match insert(tx, channel, id, relid, binding, &params, reg.claims).await? {
                Ok(sub) => registered.subs.push((relid, sub)),
                Err(problem) => return Ok(Err(exception(&params, &problem))),
            }
        }
        registered.ids.push(id);
    }
    Ok(Ok(registered))
}

/// The tables of publication `$1` as `(oid, schemaname, tablename)`, resolved through the catalogs:
/// a `::regclass` cast would need USAGE on each schema, which the replicator's role lacks.
pub const PUBLICATION_TABLES: &str = "select c.oid, t.schemaname, t.tablename
    from pg_publication_tables t
    join pg_namespace n on n.nspname = t.schemaname
    join pg_class c on c.relnamespace = n.oid and c.relname = t.tablename
    where t.pubname = $1";

/// The tables of the publication a binding's schema and table (`*` for any) match.
async fn published_tables(
    db: &impl GenericClient,
    publication: &str,
    params: &SubscriptionParams,
) -> Result<Vec<u32>, tokio_postgres::Error> {
    let sql = format!(
        "select oid from ({PUBLICATION_TABLES}) p
         where schemaname like (case $2 when '*' then '%' else $2 end) escape ''
           and tablename like (case $3 when '*' then '%' else $3 end) escape ''"
    );
    let rows = db.query(&sql, &[&publication, &params.schema, &params.table]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Checks one binding against table `relid` and stores it: the subscription, or why the
/// binding cannot apply to that table. A wildcard binding is stored as sent, for tables
/// published later.
async fn insert(
    db: &impl GenericClient,
    channel: &ChannelKey,
    id: u64,
    relid: u32,
    binding: &Map<String, Value>,
    params: &SubscriptionParams,
    claims: &Map<String, Value>,
) -> Result<Result<Sub, String>, tokio_postgres::Error> {
    let role = claims.get("role").and_then(Value::as_str).unwrap_or("anon");
    let filters = match check(db, relid, role, params).await? {
        Ok(filters) => filters,
        Err(problem) => return Ok(Err(problem)),
    };
    let wildcard = (params.schema == "*" || params.table == "*").then(|| Value::Object(binding.clone()));
    let row = db
        .query_one(
            &format!(
                "insert into sluice.subscriptions (hub, socket, topic, binding_id, relid, action, filters, select_columns, claims, claims_role, binding)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::regrole, $11)
                 returning {}",
                registry::COLUMNS
            ),
            &[
                &channel.hub,
                &channel.socket,
                &channel.topic,
                &(id as i64),
                &relid,
                &params.action.as_str(),
                &Value::Array(filters),
                &params.select,
                &Value::Object(claims.clone()),
                &role,
                &wildcard,
            ],
        )
        .await?;
    Ok(registry::sub_from_row(&row).map(|(_, sub)| sub))
}

/// Tables published after wildcard bindings were stored: each such binding is checked against
/// the publication's tables it matches and has no subscription on yet, and stored there. The
/// subscriptions taken, by table; a table a binding cannot apply to (a filter column it lacks)
/// is logged and left out.
pub async fn take_published_tables(
    db: &impl GenericClient,
    publication: &str,
) -> Result<Vec<(u32, Sub)>, tokio_postgres::Error> {
    let wildcards = db
        .query(
            "select distinct on (hub, socket, topic, binding_id) hub, socket, topic, binding_id, binding, claims
             from sluice.subscriptions where binding is not null",
            &[],
        )
        .await?;
    let mut taken = Vec::new();
    for row in &wildcards {
        let channel = ChannelKey {
            hub: row.get(0),
            socket: row.get(1),
            topic: row.get(2),
        };
        let id = row.get::<_, i64>(3) as u64;
        let (Value::Object(binding), Value::Object(claims)) = (row.get::<_, Value>(4), row.get::<_, Value>(5)) else {
            continue;
        };
        let Ok(params) = bindings::parse(&binding) else {
            continue;
        };
        for relid in published_tables(db, publication, &params).await? {
            let known = db
                .query_opt(
                    "select 1 from sluice.subscriptions
                     where hub = $1 and socket = $2 and topic = $3 and binding_id = $4 and relid = $5",
                    &[&channel.hub, &channel.socket, &channel.topic, &(id as i64), &relid],
                )
                .await?;
            if known.is_some() {
                continue;
            }
            match insert(db, &channel, id, relid, &binding, &params, &claims).await? {
                Ok(sub) => taken.push((relid, sub)),
                Err(problem) => tracing::warn!(
                    "UnableToSubscribeToPostgres: {} of {}: a table published later does not fit its binding: {problem}",
                    channel.topic,
                    channel.socket
                ),
            }
        }
    }
    Ok(taken)
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
pub(crate) async fn check(
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
        let op = Op::parse(&filter.op).unwrap_or(Op::Eq);
        let column_type = db
            .query_one(
                "select t.oid, t.typtype = 'e', format_type(t.oid, null)
                 from pg_attribute a join pg_type t on t.oid = a.atttypid
                 where a.attrelid = $1 and a.attname = $2",
                &[&relid, &filter.column],
            )
            .await?;
        if !filter::evaluated_exactly(op, column_type.get(0), column_type.get(1)) {
            return Ok(Err(texts::filter_not_exact(
                &filter.column,
                &filter.op,
                &column_type.get::<_, String>(2),
            )));
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

/// Removes every subscription (the tenant was deleted); how many.
pub async fn remove_all(db: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    db.execute("delete from sluice.subscriptions", &[]).await
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
