//! Filters against Postgres's own answer (the `filter_pg` fuzz target).

/// The column types [`FilterOracle`] asks about (its tables `sluice_fuzz.t<i>` have one column
/// `c` of each; text columns in the `C` collation, which `sluice_shared::filter` orders by).
pub const FILTER_TYPES: [&str; 17] = [
    "bool", "int8", "int2", "int4", "text", "oid", "float4", "float8", "varchar", "date", "timestamp",
    "timestamptz", "numeric", "uuid", "jsonb", "int4[]", "text[]",
];

/// Filters against Postgres's own answer: a filter registered as the replicator registers it
/// (its values cast to the column's type and canonicalized by Postgres), evaluated by
/// `Condition::passes` on a row value as pgoutput prints it, must pass exactly when Postgres says
/// `<value> <op> <filter value>` is true for that row. `match`/`imatch` are left out: they are
/// Rust regexes, not Postgres's ARE dialect (docs/protocol.md, 12).
pub struct FilterOracle {
    runtime: tokio::runtime::Runtime,
    db: crate::db::Db,
    /// (`pg_class` oid of `sluice_fuzz.t<i>`, `pg_type` oid of its column), by index into
    /// [`FILTER_TYPES`].
    tables: Vec<(u32, u32)>,
}

impl FilterOracle {
    /// Connects to the database at `url` (a scratch cluster: it applies sluice's migrations and
    /// creates schema `sluice_fuzz`).
    pub fn connect(url: &str) -> Result<FilterOracle, String> {
        let (runtime, db) = super::scratch(url)?;
        let tables = runtime.block_on(async {
            let client = db.dedicated().await.map_err(|e| e.to_string())?;
            client
                .batch_execute("create schema if not exists sluice_fuzz")
                .await
                .map_err(|e| e.to_string())?;
            let mut tables = Vec::new();
            for (i, typ) in FILTER_TYPES.iter().enumerate() {
                let collation = if matches!(*typ, "text" | "varchar" | "text[]") { " collate \"C\"" } else { "" };
                // The type names are the constants above, not input.
                client
                    .batch_execute(&format!("create table if not exists sluice_fuzz.t{i} (c {typ}{collation})"))
                    .await
                    .map_err(|e| e.to_string())?;
                let row = client
                    .query_one(
                        "select $1::text::regclass::oid, atttypid from pg_attribute where attrelid = $1::text::regclass and attname = 'c'",
                        &[&format!("sluice_fuzz.t{i}")],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tables.push((row.get(0), row.get(1)));
            }
            Ok::<_, String>(tables)
        })?;
        Ok(FilterOracle { runtime, db, tables })
    }

    /// Checks `filter` (as a client writes it, on column `c`) on a row whose `c` of type
    /// `FILTER_TYPES[type_index]` is `value` (`None`: NULL). Panics when sluice and Postgres
    /// disagree; returns quietly when either refuses the filter or the value.
    pub fn check(&self, filter: &str, type_index: usize, value: Option<&str>) {
        let index = type_index % FILTER_TYPES.len();
        let typ = FILTER_TYPES[index];
        let binding = serde_json::json!({"event": "*", "schema": "sluice_fuzz", "table": format!("t{index}"), "filter": filter});
        let Ok(params) = sluice_shared::bindings::parse(binding.as_object().expect("an object")) else {
            return;
        };
        if params.filters.iter().any(|f| matches!(f.op.as_str(), "match" | "imatch")) {
            return;
        }
        self.runtime.block_on(async {
            let Ok(client) = self.db.client().await else { return };
            let (table, type_oid) = self.tables[index];
            let Ok(Ok(stored)) = crate::subscriptions::store::check(&*client, table, "postgres", &params).await
            else {
                return;
            };
            // The row's value as pgoutput sends it: Postgres's text output of the typed value.
            let row = match value {
                None => None,
                Some(v) => match client.query_one(&format!("select $1::text::{typ}::text"), &[&v]).await {
                    Ok(row) => Some(row.get::<_, String>(0)),
                    Err(_) => return,
                },
            };
            for (filter, stored) in params.filters.iter().zip(&stored) {
                let Ok(condition) = crate::subscriptions::registry::condition(stored) else { return };
                let cell = match &row {
                    None => sluice_shared::filter::Cell::Null,
                    Some(text) => sluice_shared::filter::Cell::Text(text),
                };
                let sluice = condition.passes(type_oid, cell);
                let Some(expression) = postgres_expression(&filter.op, &filter.value, typ) else { return };
                let sql = match filter.negate {
                    false => format!("select coalesce(({expression}), false)"),
                    true => format!("select coalesce(not ({expression}), false)"),
                };
                let Ok(answer) = client.query_one(&sql, &[&row, &filter.value]).await else { return };
                let postgres: bool = answer.get(0);
                assert_eq!(
                    sluice, postgres,
                    "filter {filter:?} on {typ} value {row:?}: sluice says {sluice}, Postgres {postgres} ({sql}, stored {stored})"
                );
            }
        });
    }
}

/// What Postgres evaluates for a filter, as upstream's `realtime.check_equality_op` does
/// (`<value>::<type> <op> <filter value>::<type>`), with `$1` the row's value and `$2` the filter
/// value (both text). Built from constants only: the operator picks a template, `typ` is one of
/// [`FILTER_TYPES`], and `is` takes its keyword from a fixed list.
fn postgres_expression(op: &str, value: &str, typ: &str) -> Option<String> {
    let v = format!("($1::text)::{typ}");
    let f = format!("($2::text)::{typ}");
    Some(match op {
        "eq" => format!("{v} = {f}"),
        "neq" => format!("{v} <> {f}"),
        "lt" => format!("{v} < {f}"),
        "lte" => format!("{v} <= {f}"),
        "gt" => format!("{v} > {f}"),
        "gte" => format!("{v} >= {f}"),
        "in" => format!("{v} = any(($2::text)::{typ}[])"),
        "like" => format!("{v} like {f}"),
        "ilike" => format!("{v} ilike {f}"),
        "isdistinct" => format!("{v} is distinct from {f}"),
        "is" => {
            let keyword = match value.to_ascii_lowercase().as_str() {
                "null" => "null",
                "true" => "true",
                "false" => "false",
                "unknown" => "unknown",
                _ => return None,
            };
            format!("{v} is {keyword}")
        }
        _ => return None,
    })
}
