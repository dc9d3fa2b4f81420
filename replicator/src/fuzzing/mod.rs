//! The replicator's parsers, callable on arbitrary input by the fuzz targets (`fuzz/`): each runs
//! the code the replicator runs on what it reads from the network or the database, and checks
//! what must hold whatever the input. A panic here is a bug the fuzzer found.

use std::collections::HashMap;

use serde_json::Value;
use sluice_shared::filter::{Condition, Op};

use crate::conninfo::ConnInfo;
use crate::dispatch::payload::{self, View};
use crate::dispatch::policies;
use crate::source::{Decoder, Event};

mod filters;
mod policies_pg;

pub use filters::{FilterOracle, FILTER_TYPES};
pub use policies_pg::PolicyOracle;

/// pgoutput messages (each the bytes of one XLogData) decoded into row changes, and every change
/// rendered as a `postgres_changes` payload and run through a filter on each of its columns.
pub fn pgoutput<'a>(messages: impl IntoIterator<Item = &'a [u8]>) {
    let mut decoder = Decoder::new();
    for message in messages {
        let Ok(Some(event)) = decoder.decode(message) else { continue };
        let Event::Change(change) = event else { continue };
        let relation = &change.relation;
        let n = relation.columns.len();
        let typnames: Vec<String> = relation.columns.iter().map(|c| format!("t{}", c.type_oid)).collect();
        let yes = vec![true; n];
        let pk: Vec<bool> = relation.columns.iter().map(|c| c.identity).collect();
        for rls in [false, true] {
            let view = View {
                typnames: &typnames,
                pk: &pk,
                selectable: &yes,
                select: None,
                rls,
            };
            let data = payload::data(&change, &view);
            assert!(data.is_object(), "a payload is an object: {data}");
        }
        let identity: Vec<usize> = (0..n).filter(|&i| pk[i]).collect();
        let _ = change.key(&identity);
        for (i, column) in relation.columns.iter().enumerate() {
            let condition = Condition::new(&column.name, Op::Eq, false, vec!["1".into()]).expect("eq on 1 parses");
            let _ = condition.passes(column.type_oid, change.cell(i));
        }
    }
}

/// A libpq connection string (URI or key/value), with sluice's TLS options, as
/// `SLUICE_DATABASE_URL` or a tenant's database setting gives it.
pub fn connection_string(text: &str) {
    let env: HashMap<&str, &str> = HashMap::from([("HOME", "/nonexistent")]);
    let Ok(info) = ConnInfo::parse(text, |name| env.get(name).map(|v| v.to_string())) else {
        return;
    };
    let _ = info.describe();
    let _ = (info.host(), info.port(), info.sql_ssl_mode());
}

/// A permissive policy's text as `pg_get_expr` prints it, on table `table`: what the analyser
/// reads from it. Whatever it reads, a second reading agrees (the analyser is pure).
pub fn policy(qual: &str, table: &str) {
    let links = policies::links(qual, table);
    assert_eq!(links, policies::links(qual, table), "the analyser is deterministic");
    if let Some(links) = &links {
        assert!(!links.is_empty(), "an exact reading has at least one link");
        let _ = policies::refusal(links);
    }
    let _ = policies::advice(qual);
}

/// Replicator settings (`SLUICE_*` variables), as the environment, a tenants file or the
/// gateway's tenants listing give them: `KEY=VALUE` lines.
pub fn settings(text: &str) {
    let vars: HashMap<&str, &str> = text.lines().filter_map(|line| line.split_once('=')).collect();
    let _ = crate::config::Config::from_lookup(|name| vars.get(name).map(|v| v.to_string()));
}

/// A tenants file (`SLUICE_TENANTS_FILE`), as JSON: each tenant's settings read as a
/// replicator's configuration.
pub fn tenants_file(doc: &Value) {
    let Ok(tenants) = crate::tenants::file_tenants(doc) else { return };
    for settings in tenants.values() {
        let _ = crate::config::Config::from_lookup(|name| settings.get(name).cloned());
    }
}

/// A runtime and a connection to the scratch database at `url`, with sluice's migrations applied:
/// what the oracles that ask Postgres share.
fn scratch(url: &str) -> Result<(tokio::runtime::Runtime, crate::db::Db), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let info = ConnInfo::parse(url, |name| std::env::var(name).ok()).map_err(|e| e.to_string())?;
    let db = runtime.block_on(async {
        let db = crate::db::Db::connect(&info).await.map_err(|e| e.to_string())?;
        let mut client = db.dedicated().await.map_err(|e| e.to_string())?;
        crate::setup::migrations::run(&mut client).await.map_err(|e| e.0)?;
        Ok::<_, String>(db)
    })?;
    Ok((runtime, db))
}
