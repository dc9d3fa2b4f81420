//! Realtime Authorization for private channels (docs/protocol.md 5.6): what a user's claims may read
//! and write on a topic, decided by the RLS policies on `realtime.messages`, as upstream does.
//!
//! Read: as the replicator's own role, insert one probe row per extension for the topic; then,
//! as the user (role, claims, `realtime.topic`, headers set with `set_config(..., true)`), select
//! them back: what is visible may be read. Write: as the user, insert a row per extension inside a
//! savepoint: what is not refused may be written. Everything is rolled back; a policy that fails
//! counts as a refusal.

use serde_json::Value;
use sluice_shared::internal::{Authorize, Authorized, Extension};
use tokio_postgres::Client;
use tracing::warn;

pub async fn check(db: &mut Client, request: &Authorize) -> Result<Authorized, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    let role = request.claims.get("role").and_then(Value::as_str).unwrap_or("anon");
    let sub = request.claims.get("sub").and_then(Value::as_str).unwrap_or("");
    let claims = Value::Object(request.claims.clone()).to_string();
    let headers = Value::Object(request.headers.clone()).to_string();
    // Probe rows are inserted before switching to the user, who may not insert at all.
    let readable: Vec<&str> = request.read.iter().map(|e| e.as_str()).collect();
    let probes: Vec<String> = if readable.is_empty() {
        Vec::new()
    } else {
        tx.query(
            "insert into realtime.messages (topic, extension, private, event, payload)
             select $1, ext, true, 'sluice.authorization', '{}'::jsonb from unnest($2::text[]) ext
             returning id::text",
            &[&request.topic, &readable],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    tx.execute(
        "select set_config('role', $1, true), set_config('realtime.topic', $2, true),
                set_config('request.jwt.claims', $3, true), set_config('request.jwt.claim.sub', $4, true),
                set_config('request.jwt.claim.role', $1, true), set_config('request.headers', $5, true)",
        &[&role, &request.topic, &claims, &sub, &headers],
    )
    .await?;
    let mut answer = Authorized::default();
    if !probes.is_empty() {
        tx.execute("savepoint policies", &[]).await?;
        match tx
            .query(
                "select extension from realtime.messages where id = any($1::text[]::uuid[])",
                &[&probes],
            )
            .await
        {
            Ok(rows) => answer.read = rows.iter().filter_map(|r| extension(r.get(0))).collect(),
            Err(e) if e.as_db_error().is_some() => {
                warn!("RlsPolicyError: reading {} as {role}: {e}", request.topic);
                tx.execute("rollback to savepoint policies", &[]).await?;
            }
            Err(e) => return Err(e),
        }
    }
    for ext in &request.write {
        tx.execute("savepoint policies", &[]).await?;
        let inserted = tx
            .execute(
                "insert into realtime.messages (topic, extension, private, event, payload)
                 values ($1, $2, true, 'sluice.authorization', '{}'::jsonb)",
                &[&request.topic, &ext.as_str()],
            )
            .await;
        match inserted {
            Ok(_) => answer.write.push(*ext),
            Err(e) if e.as_db_error().is_some() => {
                if e.code() != Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                    warn!("RlsPolicyError: writing {} as {role}: {e}", request.topic);
                }
                tx.execute("rollback to savepoint policies", &[]).await?;
            }
            Err(e) => return Err(e),
        }
    }
    tx.rollback().await?;
    Ok(answer)
}

fn extension(name: &str) -> Option<Extension> {
    match name {
        "broadcast" => Some(Extension::Broadcast),
        "presence" => Some(Extension::Presence),
        _ => None,
    }
}
