//! Checks at start that the database can be streamed from ([`check`]), and prepares what sluice
//! owns ([`prepare_stream`]): the publication (created empty if missing) and the persistent slot.
//! Every failure names the fix. Migrations run between the two, so that every publication the slot
//! is read with exists before the slot does.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tracing::info;

use crate::config::Config;
use crate::conninfo::POOLER_FIX;
use crate::db::Db;
use crate::error::StartError;

fn sql_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StartError {
    move |e| StartError(format!("preflight: {what} failed: {e}"))
}

/// Whether the role (a `pg_roles` row) may stream: the REPLICATION attribute, a superuser, or
/// membership in Amazon RDS's `rds_replication` (RDS does not hand out the attribute).
const CAN_REPLICATE: &str =
    "(rolreplication OR rolsuper OR CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_replication')
     THEN pg_has_role(current_user, 'rds_replication', 'MEMBER') ELSE false END)";

/// What the start checks look at, read in one place: [`check`] stops on it, `doctor` reports it.
pub struct Facts {
    pub wal_level: String,
    pub user: String,
    pub superuser: bool,
    /// See [`CAN_REPLICATE`].
    pub can_replicate: bool,
    /// Replication slots used, and `max_replication_slots`.
    pub slots: (i32, i32),
}

pub async fn facts(db: &Client) -> Result<Facts, tokio_postgres::Error> {
    let row = db
        .query_one(
            &format!(
                "SELECT current_setting('wal_level'), current_user::text, rolsuper, {CAN_REPLICATE},
                        (SELECT count(*)::int FROM pg_replication_slots), current_setting('max_replication_slots')::int
                 FROM pg_roles WHERE rolname = current_user"
            ),
            &[],
        )
        .await?;
    Ok(Facts {
        wal_level: row.get(0),
        user: row.get(1),
        superuser: row.get(2),
        can_replicate: row.get(3),
        slots: (row.get(4), row.get(5)),
    })
}

pub async fn check(db: &Client, config: &Config) -> Result<(), StartError> {
    let Facts {
        wal_level,
        user,
        can_replicate,
        slots: (used, max),
        ..
    } = facts(db)
        .await
        .map_err(sql_error("reading wal_level, the role and the slots"))?;
    if wal_level != "logical" {
        return Err(StartError(format!(
            "wal_level is {wal_level}, and logical replication needs logical: run ALTER SYSTEM SET wal_level = logical (or set it in postgresql.conf) and restart Postgres"
        )));
    }
    if !can_replicate {
        return Err(StartError(format!("role {user} may not replicate: run ALTER ROLE {user} WITH REPLICATION (as a superuser), or connect as a role that may")));
    }
    if used >= max && !slot_exists(db, config).await? {
        return Err(StartError(format!(
            "no free replication slot (max_replication_slots = {max}, all used): raise max_replication_slots and restart Postgres, or drop an unused slot with pg_drop_replication_slot"
        )));
    }
    Ok(())
}

/// A pooler in transaction mode hands one server session to successive clients: a second
/// connection, opened while the first is still open, on the same backend means one (in session
/// mode, or direct, each open connection has its own).
pub async fn behind_transaction_pooler(db: &Db) -> Result<bool, tokio_postgres::Error> {
    let pid = "select pg_backend_pid()";
    let first = db.dedicated().await?;
    let a: i32 = first.query_one(pid, &[]).await?.get(0);
    let second = db.dedicated().await?;
    let b: i32 = second.query_one(pid, &[]).await?.get(0);
    drop(first);
    Ok(a == b)
}

/// Stops the start behind a pooler in transaction mode.
pub async fn check_pooler(db: &Db) -> Result<(), StartError> {
    match behind_transaction_pooler(db).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(StartError(format!(
            "cannot stream through this connection: {POOLER_FIX}"
        ))),
        Err(e) => Err(StartError(format!("preflight: probing for a pooler failed: {e}"))),
    }
}

/// Whether the slot exists in this database. Slot names are the cluster's: one of another
/// database (another tenant's, say) is refused with the fix rather than read.
async fn slot_exists(db: &Client, config: &Config) -> Result<bool, StartError> {
    let found = db
        .query_opt(
            "SELECT database::text, database = current_database() FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(sql_error("looking up the slot"))?;
    match found {
        None => Ok(false),
        Some(row) if row.get::<_, Option<bool>>(1) == Some(true) => Ok(true),
        Some(row) => Err(StartError(format!(
            "the replication slot {} belongs to database {} (slot names are shared by the whole server): set SLUICE_SLOT to a name of this database's own",
            config.slot,
            row.get::<_, Option<String>>(0).unwrap_or_else(|| "(a physical slot)".into())
        ))),
    }
}

pub async fn prepare_stream(db: &Client, config: &Config) -> Result<(), StartError> {
    let slot_exists = slot_exists(db, config).await?;
    let publication_exists = db
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(sql_error("looking up the publication"))?
        .is_some();
    if !publication_exists {
        // Postgres quotes the name itself (format %I); no user input is spliced into SQL here.
        let create: String = db
            .query_one(
                "SELECT format('CREATE PUBLICATION %I', $1::text)",
                &[&config.publication],
            )
            .await
            .map_err(sql_error("preparing CREATE PUBLICATION"))?
            .get(0);
        match db.batch_execute(&create).await {
            Ok(()) => info!(
                "created the empty publication {p}: add the tables to stream with ALTER PUBLICATION {p} ADD TABLE <schema>.<table>",
                p = config.publication
            ),
            // Another replicator starting at the same time created it first (seen as either code,
            // depending on when the two transactions meet).
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_OBJECT) || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(StartError(format!("creating publication {} failed: {e}", config.publication))),
        }
    }

    if !slot_exists {
        db.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&config.slot],
        )
        .await
        .map_err(|e| StartError(format!("creating replication slot {} failed: {e}", config.slot)))?;
        info!("created the persistent replication slot {}", config.slot);
    }
    Ok(())
}
