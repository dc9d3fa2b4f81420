//! Stacks started at the same time are each their own: ports, database, tenant state.

mod common;

use common::Client;
use serde_json::json;

#[tokio::test]
async fn two_stacks_start_together_and_stay_apart() -> Result<(), sluice_testkit::Error> {
    let (one, two) = tokio::join!(
        sluice_testkit::Sluice::default().start(),
        sluice_testkit::Sluice::default().start()
    );
    let (one, two) = (one?, two?);
    assert_ne!(one.url(), two.url());
    assert_ne!(one.database_url(), two.database_url());
    one.sql("create table public.only_in_one (id int)").await?;
    let found: i64 = two
        .client()
        .await?
        .query_one("select count(*) from pg_tables where tablename = 'only_in_one'", &[])
        .await?
        .get(0);
    assert_eq!(found, 0, "each stack has a database of its own");

    // A broadcast on one stack's room1 reaches that stack's sockets only.
    let config = json!({ "broadcast": { "self": true }, "presence": { "key": "" } });
    let mut on_one = Client::connect(&one, one.anon_key()).await;
    let mut on_two = Client::connect(&two, two.anon_key()).await;
    on_one.join("realtime:room1", config.clone(), one.anon_key()).await;
    on_two.join("realtime:room1", config, two.anon_key()).await;
    on_one
        .send(
            "realtime:room1",
            "broadcast",
            json!({ "type": "broadcast", "event": "e", "payload": { "from": 1 } }),
        )
        .await;
    on_two
        .send(
            "realtime:room1",
            "broadcast",
            json!({ "type": "broadcast", "event": "e", "payload": { "from": 2 } }),
        )
        .await;
    assert_eq!(
        on_one.next(|m| m["event"] == "broadcast").await["payload"]["payload"]["from"],
        1
    );
    assert_eq!(
        on_two.next(|m| m["event"] == "broadcast").await["payload"]["payload"]["from"],
        2
    );
    Ok(())
}

// cargo test runs these two at once, on threads of their own.
#[tokio::test]
async fn a_stack_in_one_test() -> Result<(), sluice_testkit::Error> {
    let sluice = sluice_testkit::Sluice::default()
        .with_tenant_id("first")
        .start()
        .await?;
    assert_eq!(sluice.tenant_id(), "first");
    sluice.sql("select 1").await
}

#[tokio::test]
async fn a_stack_in_another_test() -> Result<(), sluice_testkit::Error> {
    let sluice = sluice_testkit::Sluice::default()
        .with_tenant_id("second")
        .start()
        .await?;
    assert_eq!(sluice.tenant_id(), "second");
    sluice.sql("select 1").await
}
