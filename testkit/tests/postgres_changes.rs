//! Postgres Changes through a stack: a filter, and RLS that shows each user their own rows only.

mod common;

use common::Client;
use serde_json::json;

#[tokio::test]
async fn a_filtered_subscription_gets_the_matching_insert_only() -> Result<(), sluice_testkit::Error> {
    let sluice = sluice_testkit::Sluice::default().start().await?;
    sluice
        .sql("create table public.todos (id bigint primary key, title text, done bool not null default false)")
        .await?;
    sluice.publish("public.todos").await?;
    let key = sluice.service_role_key().to_string();
    let mut client = Client::connect(&sluice, &key).await;
    let binding = json!([{ "event": "INSERT", "schema": "public", "table": "todos", "filter": "done=eq.false" }]);
    client.join_changes("realtime:todos", binding, &key).await;
    sluice.sql("insert into public.todos values (1, 'done already', true); insert into public.todos values (2, 'to do', false)").await?;
    let change = client.next(|m| m["event"] == "postgres_changes").await;
    let data = &change["payload"]["data"];
    assert_eq!(data["type"], "INSERT");
    assert_eq!(data["table"], "todos");
    assert_eq!(
        data["record"]["id"], 2,
        "the row with done = true is filtered out: {change}"
    );
    Ok(())
}

#[tokio::test]
async fn rls_shows_each_user_their_own_rows() -> Result<(), sluice_testkit::Error> {
    let sluice = sluice_testkit::Sluice::default().start().await?;
    // Written as for Supabase: auth.uid(), the authenticated role, grants by default privileges.
    sluice
        .sql(
            "create table public.notes (id bigint primary key, user_id uuid not null, body text);
             alter table public.notes enable row level security;
             create policy own_notes on public.notes for select to authenticated using (auth.uid() = user_id);",
        )
        .await?;
    sluice.publish("notes").await?;
    let (alice, bob) = (
        "11111111-1111-1111-1111-111111111111",
        "22222222-2222-2222-2222-222222222222",
    );
    let token = |sub: &str| sluice.sign(json!({ "sub": sub, "role": "authenticated", "exp": common::in_an_hour() }));
    let binding = json!([{ "event": "INSERT", "schema": "public", "table": "notes" }]);
    let mut alice_socket = Client::connect(&sluice, sluice.anon_key()).await;
    alice_socket
        .join_changes("realtime:notes", binding.clone(), &token(alice))
        .await;
    let mut bob_socket = Client::connect(&sluice, sluice.anon_key()).await;
    bob_socket.join_changes("realtime:notes", binding, &token(bob)).await;
    sluice.sql(&format!("insert into public.notes values (1, '{bob}', 'for bob'); insert into public.notes values (2, '{alice}', 'for alice')")).await?;
    let seen_by_alice = alice_socket.next(|m| m["event"] == "postgres_changes").await;
    assert_eq!(
        seen_by_alice["payload"]["data"]["record"]["body"], "for alice",
        "{seen_by_alice}"
    );
    let seen_by_bob = bob_socket.next(|m| m["event"] == "postgres_changes").await;
    assert_eq!(
        seen_by_bob["payload"]["data"]["record"]["body"], "for bob",
        "{seen_by_bob}"
    );
    Ok(())
}
