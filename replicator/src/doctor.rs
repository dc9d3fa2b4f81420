//! `sluice-replicator doctor`: connects with the configured settings and checks everything the
//! replicator needs from the database and the gateway, one line per check: `ok`, `warn` (works,
//! but something deserves a look) or `FAIL` (blocks), each not-ok line with its fix. Exits
//! non-zero when something blocks.

use std::fmt::Write as _;

use tokio_postgres::Client;

use crate::config::Config;
use crate::db::Db;
use crate::dispatch::{helpers, policies};
use crate::sink::Gateway;
use crate::source::slot::{effective_limit, KEEP_SIZE_BYTES};
use crate::stats::Stats;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, level: Level, check: &str, text: impl AsRef<str>) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        println!("[{tag}] {check}: {}", text.as_ref());
    }
}

/// Runs every check; `true` when nothing blocks.
pub async fn run(config: &Config) -> bool {
    let mut report = Report::default();
    let db = match Db::connect(&config.database).await {
        Ok(db) => db,
        Err(e) => {
            let e = e.to_string();
            let fix = config
                .database
                .explain(&e)
                .unwrap_or_else(|| "check SLUICE_DATABASE_URL and that the server accepts connections".into());
            report.line(
                Level::Fail,
                "connection",
                format!("{} ({e}): {fix}", config.database.describe()),
            );
            gateway(config, &mut report).await;
            return false;
        }
    };
    match database(config, &db, &mut report).await {
        Ok(()) => {}
        Err(e) => report.line(
            Level::Fail,
            "database",
            format!("a check's query failed: {}", crate::db::error_text(&e)),
        ),
    }
    gateway(config, &mut report).await;
    !report.failed
}

async fn database(config: &Config, db: &Db, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    let client = db.client().await?;
    tls(config, &client, report).await?;

    let facts = crate::setup::preflight::facts(&client).await?;
    let (user, superuser, replication) = (facts.user.clone(), facts.superuser, facts.can_replicate);
    match facts.wal_level.as_str() {
        "logical" => report.line(Level::Ok, "wal_level", "logical"),
        other => report.line(
            Level::Fail,
            "wal_level",
            format!("{other}; logical replication needs logical: ALTER SYSTEM SET wal_level = logical, then restart Postgres (managed databases: see docs/deploy.md for your provider's setting)"),
        ),
    }

    match (superuser, replication) {
        (true, _) => report.line(
            Level::Warn,
            "role",
            format!("{user} is a superuser; least privilege: run as a role prepared by `sluice-replicator setup-sql`"),
        ),
        (false, true) => report.line(Level::Ok, "role", format!("{user} may replicate and is not a superuser")),
        (false, false) => report.line(
            Level::Fail,
            "role",
            format!("{user} may not replicate: ALTER ROLE \"{user}\" WITH REPLICATION (the SQL of `sluice-replicator setup-sql`)"),
        ),
    }

    pooler(db, report).await?;

    let can_create: bool = client
        .query_one(
            "select has_database_privilege(current_database(), 'CREATE')
                 or exists (select from pg_namespace where nspname = 'sluice' and pg_has_role(nspowner, 'USAGE'))",
            &[],
        )
        .await?
        .get(0);
    match can_create {
        true => report.line(Level::Ok, "schema", "the role can create or owns the sluice schema"),
        false => report.line(
            Level::Fail,
            "schema",
            format!("{user} cannot create its sluice schema: GRANT CREATE ON DATABASE <db> TO \"{user}\""),
        ),
    }

    let rows = client
        .query(
            "select r.name, exists (select from pg_roles where rolname = r.name),
                    case when exists (select from pg_roles where rolname = r.name)
                         then pg_has_role(current_user, r.name, 'MEMBER') else false end
             from unnest(array['anon', 'authenticated', 'service_role']) as r(name)",
            &[],
        )
        .await?;
    let missing: Vec<String> = rows.iter().filter(|r| !r.get::<_, bool>(1)).map(|r| r.get(0)).collect();
    let not_member: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1) && !r.get::<_, bool>(2))
        .map(|r| r.get(0))
        .collect();
    if !not_member.is_empty() {
        report.line(
            Level::Fail,
            "API roles",
            format!(
                "{user} cannot become {} for RLS checks: GRANT {} TO \"{user}\"",
                not_member.join(", "),
                not_member.join(", ")
            ),
        );
    } else if !missing.is_empty() {
        report.line(
            Level::Warn,
            "API roles",
            format!("{} do not exist; tokens with those roles cannot subscribe (`sluice-replicator setup-sql` creates them)", missing.join(", ")),
        );
    } else {
        report.line(
            Level::Ok,
            "API roles",
            format!("{user} can become anon, authenticated, service_role"),
        );
    }

    slot(config, &client, facts.slots, report).await?;
    publication(config, &client, report).await
}

async fn tls(config: &Config, client: &Client, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_opt("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()", &[])
        .await?;
    let encrypted = row.as_ref().is_some_and(|r| r.get::<_, bool>(0));
    let mode = config.database.tls.mode;
    let host = config.database.host();
    let local = host.starts_with('/')
        || host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    use crate::conninfo::SslMode;
    match (encrypted, mode) {
        (true, SslMode::VerifyFull | SslMode::VerifyCa) => report.line(
            Level::Ok,
            "TLS",
            format!(
                "{}, server certificate verified (sslmode={})",
                row.and_then(|r| r.get::<_, Option<String>>(1)).unwrap_or_default(),
                mode.name()
            ),
        ),
        (true, _) => report.line(
            Level::Warn,
            "TLS",
            format!("encrypted, but the server's certificate is not verified (sslmode={}): use sslmode=verify-full with sslrootcert=<your provider's CA file>", mode.name()),
        ),
        (false, _) if local => report.line(Level::Ok, "TLS", "not encrypted, on this machine"),
        (false, _) => report.line(
            Level::Fail,
            "TLS",
            format!("the connection to {host} is not encrypted: set sslmode=verify-full and sslrootcert in SLUICE_DATABASE_URL, and enable ssl on the server"),
        ),
    }
    Ok(())
}

async fn pooler(db: &Db, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    match crate::setup::preflight::behind_transaction_pooler(db).await? {
        false => report.line(Level::Ok, "pooler", "a direct (or session-mode) connection"),
        true => report.line(Level::Fail, "pooler", crate::conninfo::POOLER_FIX),
    }
    Ok(())
}

async fn slot(
    config: &Config,
    client: &Client,
    (used, max): (i32, i32),
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let keep_size: Option<i64> = client
        .query_one(&format!("select {KEEP_SIZE_BYTES}"), &[])
        .await?
        .get(0);
    let keep_size = keep_size.map(|k| k.max(0) as u64);
    let limit = effective_limit(config.slot_limits.max_bytes, keep_size);
    match (keep_size, limit) {
        (None, Some(limit)) => report.line(
            Level::Ok,
            "WAL bound",
            format!("max_slot_wal_keep_size is unset; sluice recreates its slot past {} MB (SLUICE_SLOT_MAX_SIZE)", limit >> 20),
        ),
        (None, None) => report.line(
            Level::Warn,
            "WAL bound",
            "nothing bounds the WAL the slot may keep (SLUICE_SLOT_MAX_SIZE=off, max_slot_wal_keep_size unset): an unreachable gateway can fill the disk; set either",
        ),
        (Some(keep), limit) => report.line(
            Level::Ok,
            "WAL bound",
            format!(
                "max_slot_wal_keep_size = {} MB; {}",
                keep >> 20,
                limit.map_or("Postgres invalidates the slot past it (sluice recreates it)".into(), |l| format!(
                    "sluice recreates its slot past {} MB",
                    l >> 20
                ))
            ),
        ),
    }

    let row = client
        .query_opt(
            "select active, coalesce(wal_status, 'lost'), coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, 0)
             from pg_replication_slots where slot_name = $1",
            &[&config.slot],
        )
        .await?;
    match row {
        Some(row) => {
            let (active, status, retained): (bool, String, i64) = (row.get(0), row.get(1), row.get(2));
            let retained = retained.max(0) as u64;
            let state = format!(
                "{} {}, wal_status {status}, retains {} kB",
                config.slot,
                if active { "in use" } else { "idle" },
                retained >> 10
            );
            if status == "lost" {
                report.line(Level::Warn, "slot", format!("{state}: invalidated by Postgres; the replicator recreates it at start and tells subscribers changes were lost"));
            } else if retained > config.slot_limits.warn_bytes {
                report.line(
                    Level::Warn,
                    "slot",
                    format!("{state}: over SLUICE_SLOT_WARN_SIZE; is the gateway taking changes?"),
                );
            } else {
                report.line(Level::Ok, "slot", state);
            }
        }
        None => {
            match used < max {
                true => report.line(Level::Ok, "slot", format!("{} will be created ({used} of {max} slots used)", config.slot)),
                false => report.line(
                    Level::Fail,
                    "slot",
                    format!("no free replication slot ({used} of max_replication_slots = {max}): raise max_replication_slots and restart, or drop an unused slot with pg_drop_replication_slot"),
                ),
            }
        }
    }
    Ok(())
}

async fn publication(config: &Config, client: &Client, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    let p = &config.publication;
    let exists = client
        .query_opt("select from pg_publication where pubname = $1", &[p])
        .await?
        .is_some();
    if !exists {
        report.line(Level::Warn, "publication", format!("{p} does not exist; the replicator creates it empty: then ALTER PUBLICATION {p} ADD TABLE <schema>.<table>"));
        return Ok(());
    }
    let sql = format!(
        "select format('%I.%I', p.schemaname, p.tablename), c.relreplident::text,
                exists (select from pg_index i where i.indrelid = c.oid and i.indisprimary),
                c.relrowsecurity,
                array(select r from unnest(array['anon', 'authenticated']) r
                      where case when exists (select from pg_roles where rolname = r)
                                 then has_table_privilege(r, c.oid, 'SELECT') else false end)
         from ({}) p join pg_class c on c.oid = p.oid order by 1",
        crate::subscriptions::store::PUBLICATION_TABLES
    );
    let tables = client.query(&sql, &[p]).await?;
    if tables.is_empty() {
        report.line(
            Level::Warn,
            "publication",
            format!("{p} has no tables: ALTER PUBLICATION {p} ADD TABLE <schema>.<table>"),
        );
        return Ok(());
    }
    report.line(
        Level::Ok,
        "publication",
        format!("{p} publishes {} tables", tables.len()),
    );
    for row in tables {
        let (table, identity, has_key, rls, readers): (String, String, bool, bool, Vec<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let mut problems = String::new();
        let mut level = Level::Ok;
        if identity == "n" || (identity == "d" && !has_key) {
            level = Level::Fail;
            let _ = write!(problems, "UPDATE and DELETE on it fail (no replica identity): ALTER TABLE {table} ADD PRIMARY KEY (...) or ALTER TABLE {table} REPLICA IDENTITY FULL; ");
        } else if !has_key {
            level = Level::Warn;
            let _ = write!(
                problems,
                "no primary key: RLS-checked subscribers get Error 400 rows: add one; "
            );
        }
        if !rls {
            level = level.max_warn();
            let _ = write!(problems, "RLS is off, every subscriber sees every row: ALTER TABLE {table} ENABLE ROW LEVEL SECURITY and add policies; ");
        }
        if readers.is_empty() {
            level = level.max_warn();
            let _ = write!(problems, "neither anon nor authenticated may SELECT it, their subscribers get Error 401: GRANT SELECT ON {table} TO authenticated; ");
        }
        let text = match level {
            Level::Ok => format!(
                "primary key, REPLICA IDENTITY {}, RLS on, SELECT for {}",
                match identity.as_str() {
                    "f" => "FULL",
                    "i" => "USING INDEX",
                    _ => "DEFAULT",
                },
                readers.join(", ")
            ),
            _ => problems.trim_end_matches("; ").to_string(),
        };
        report.line(level, &table, text);
        if rls {
            policies(client, &table, report).await?;
        }
    }
    Ok(())
}

/// For a table with RLS on: which permissive SELECT policies are on the indexed path (a change
/// reaches its subscribers by a lookup) and which are checked for every subscriber, with why.
async fn policies(client: &Client, table: &str, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "select p.polname::text, c.relname::text, pg_get_expr(p.polqual, p.polrelid)
             from pg_policy p join pg_class c on c.oid = p.polrelid
             where p.polrelid = $1::text::regclass and p.polpermissive and p.polcmd in ('r', '*')
             order by 1",
            &[&table],
        )
        .await?;
    for row in rows {
        let (name, relname, qual): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        let qual = qual.unwrap_or_else(|| "true".into());
        let check = format!("{table} policy {name}");
        let why_not = match helpers::inlined(client, &qual, &relname).await? {
            Err(why) => Some(why),
            Ok(qual) => match policies::links(&qual, &relname) {
                Some(links) => policies::refusal(&links),
                None => Some(policies::advice(&qual)),
            },
        };
        match why_not {
            None => report.line(Level::Ok, &check, "indexed (when the compared column is an integer, text, varchar or uuid)"),
            Some(why) => report.line(Level::Warn, &check, format!("checked for every subscriber: {why}")),
        }
    }
    Ok(())
}

impl Level {
    /// At least a warning.
    fn max_warn(self) -> Level {
        match self {
            Level::Ok => Level::Warn,
            other => other,
        }
    }
}

async fn gateway(config: &Config, report: &mut Report) {
    let gateway = match Gateway::new(config, std::sync::Arc::new(Stats::default())) {
        Ok(gateway) => gateway,
        Err(e) => return report.line(Level::Fail, "gateway", e),
    };
    match gateway.ping().await {
        Ok(()) => report.line(
            Level::Ok,
            "gateway",
            format!("{} takes the internal secret", config.gateway_url),
        ),
        Err(e) => report.line(Level::Fail, "gateway", format!("{}: {e}", config.gateway_url)),
    }
}
