//! Postgres Changes: a filter, typed records, RLS seen by the right user only, switching users
//! with `set_auth`, and the user's token on the very first join.

mod common;

use common::next;
use serde::Deserialize;
use serde_json::json;
use sluice_client::{ChannelEvent, Client, PostgresChange, PostgresChangeEvent};

const ALICE: &str = "11111111-1111-1111-1111-111111111111";
const BOB: &str = "22222222-2222-2222-2222-222222222222";

fn in_an_hour() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600
}

fn change(e: ChannelEvent) -> Option<PostgresChange> {
    match e {
        ChannelEvent::PostgresChange(change) => Some(change),
        _ => None,
    }
}

#[derive(Debug, Deserialize, PartialEq)]
struct Todo {
    id: i64,
    title: String,
    done: bool,
}

#[tokio::test]
async fn a_filtered_binding_gets_matching_rows_as_typed_records() {
    let stack = common::stack().await;
    stack.sql("create table public.todos (id bigint primary key, title text not null, done bool not null default false)").await.unwrap();
    stack.publish("public.todos").await.unwrap();
    let client = Client::builder(stack.url(), stack.anon_key())
        .access_token(stack.service_role_key())
        .connect()
        .await
        .unwrap();
    let channel = client
        .channel("todos")
        .on_postgres_changes(PostgresChangeEvent::Insert, "public", "todos", Some("done=eq.false"))
        .subscribe()
        .await
        .expect("subscribed once the server said Subscribed to PostgreSQL");
    let mut events = channel.events();
    stack.sql("insert into public.todos values (1, 'done already', true); insert into public.todos values (2, 'to do', false)").await.unwrap();
    let got = next(&mut events, change).await;
    assert_eq!(got.event(), Some(PostgresChangeEvent::Insert));
    assert_eq!((got.schema(), got.table()), ("public", "todos"));
    assert!(got.commit_timestamp().is_some());
    assert_eq!(got.record::<Todo>().unwrap(), Todo { id: 2, title: "to do".into(), done: false }, "row 1 is filtered out");
    assert!(got.columns().iter().any(|c| c.name == "done" && c.type_name == "bool"));
    // A bad filter is refused with the server's text.
    let refused = client
        .channel("bad")
        .on_postgres_changes(PostgresChangeEvent::All, "public", "todos", Some("done=zz.1"))
        .subscribe()
        .await;
    assert!(matches!(&refused, Err(sluice_client::Error::PostgresChanges(m)) if m.contains("filter")), "{:?}", refused.err());
}

#[tokio::test]
async fn rls_follows_the_token_from_the_first_join_and_after_set_auth() {
    let stack = common::stack().await;
    stack
        .sql(
            "create table public.notes (id bigint primary key, user_id uuid not null, body text);
             alter table public.notes enable row level security;
             create policy own_notes on public.notes for select to authenticated using (auth.uid() = user_id);",
        )
        .await
        .unwrap();
    stack.publish("public.notes").await.unwrap();
    let token = |sub: &str| stack.sign(json!({"sub": sub, "role": "authenticated", "exp": in_an_hour()}));
    let insert = |id: i64, user: &str| format!("insert into public.notes values ({id}, '{user}', 'for {id}')");

    // The token is set before connecting: the first join carries it, not the anon key.
    let client = Client::builder(stack.url(), stack.anon_key())
        .access_token(token(ALICE))
        .connect()
        .await
        .unwrap();
    let channel = client
        .channel("notes")
        .on_postgres_changes(PostgresChangeEvent::All, "public", "notes", None)
        .subscribe()
        .await
        .unwrap();
    let mut events = channel.events();
    stack.sql(&format!("{}; {}", insert(1, BOB), insert(2, ALICE))).await.unwrap();
    assert_eq!(next(&mut events, change).await.record_json()["id"], 2, "alice sees her row only");

    // Switching users: the server re-subscribes with the new claims and says so.
    client.set_auth(token(BOB)).await.unwrap();
    next(&mut events, |e| match e {
        ChannelEvent::System(s) if s.extension == "postgres_changes" && s.ok => Some(()),
        _ => None,
    })
    .await;
    stack.sql(&format!("{}; {}", insert(3, ALICE), insert(4, BOB))).await.unwrap();
    assert_eq!(next(&mut events, change).await.record_json()["id"], 4, "now bob's rows only");

    // A provider is asked before connecting: its token is on the first join too.
    let bobs = token(BOB);
    let provided = Client::builder(stack.url(), stack.anon_key())
        .access_token_provider(move || {
            let token = bobs.clone();
            async move { Some(token) }
        })
        .connect()
        .await
        .unwrap();
    let channel = provided
        .channel("notes-2")
        .on_postgres_changes(PostgresChangeEvent::Insert, "public", "notes", None)
        .subscribe()
        .await
        .unwrap();
    let mut events = channel.events();
    stack.sql(&format!("{}; {}", insert(5, ALICE), insert(6, BOB))).await.unwrap();
    assert_eq!(next(&mut events, change).await.record_json()["id"], 6);
}
