//! A stack streaming from a database the test made (`with_postgres_connection`): its slot is its
//! own and is gone after the stack.

mod common;

use common::Client;
use serde_json::json;

#[tokio::test]
async fn a_stack_streams_from_a_database_the_test_made() -> Result<(), sluice_testkit::Error> {
    let database = sluice_testkit::Database::start().await?;
    let admin = {
        let (client, connection) = tokio_postgres::connect(database.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
    };
    admin
        .batch_execute("create table public.events (id bigint primary key, kind text)")
        .await?;
    admin
        .batch_execute("alter publication supabase_realtime add table public.events")
        .await?;

    let sluice = sluice_testkit::Sluice::default()
        .with_postgres_connection(database.url())
        .start()
        .await?;
    assert_eq!(sluice.database_url(), database.url());
    let key = sluice.service_role_key().to_string();
    let mut client = Client::connect(&sluice, &key).await;
    client
        .join_changes(
            "realtime:events",
            json!([{ "event": "*", "schema": "public", "table": "events" }]),
            &key,
        )
        .await;
    admin
        .batch_execute("insert into public.events values (1, 'created')")
        .await?;
    let change = client.next(|m| m["event"] == "postgres_changes").await;
    assert_eq!(change["payload"]["data"]["record"]["kind"], "created");

    assert_eq!(kit_slots(&admin).await?, 1, "the stack streams from a slot of its own");
    sluice.stop().await?;
    assert_eq!(kit_slots(&admin).await?, 0, "the stack's slot is dropped when it stops");
    Ok(())
}

async fn kit_slots(admin: &tokio_postgres::Client) -> Result<usize, tokio_postgres::Error> {
    let rows = admin
        .query(
            "select slot_name from pg_replication_slots where slot_name like 'sluice_testkit_%'",
            &[],
        )
        .await?;
    Ok(rows.len())
}
