//! The README's example test, as it is there (kept compiling and passing).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::{connect_async, tungstenite::Message};

#[tokio::test]
async fn a_user_sees_their_own_new_note() -> Result<(), Box<dyn std::error::Error>> {
    let sluice = sluice_testkit::Sluice::default()
        .with_jwt_secret("a-secret-of-at-least-32-characters-long")
        .with_tenant_id("realtime-dev")
        .start()
        .await?;

    // Written as for Supabase: the API roles, auth.uid(), grants by default privileges.
    sluice
        .sql(
            "create table public.notes (id bigint primary key, user_id uuid not null, body text);
                alter table public.notes enable row level security;
                create policy own on public.notes for select to authenticated using (auth.uid() = user_id);",
        )
        .await?;
    sluice.publish("public.notes").await?;

    let alice = "11111111-1111-1111-1111-111111111111";
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let token = sluice.sign(json!({ "sub": alice, "role": "authenticated", "exp": exp }));

    let url = format!("{}?apikey={}&vsn=1.0.0", sluice.websocket_url(), sluice.anon_key());
    let (mut socket, _) = connect_async(url.as_str()).await?;
    let join = json!({ "topic": "realtime:notes", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": { "access_token": token, "config": { "postgres_changes": [
            { "event": "INSERT", "schema": "public", "table": "notes" } ] } } });
    socket.send(Message::text(join.to_string())).await?;

    // SUBSCRIBED, then "Subscribed to PostgreSQL": from here on no change is missed.
    let mut next = async || -> Value {
        loop {
            if let Some(Ok(Message::Text(t))) = socket.next().await {
                return serde_json::from_str(&t).unwrap();
            }
        }
    };
    while next().await["payload"]["message"] != "Subscribed to PostgreSQL" {}

    sluice
        .sql(&format!(
            "insert into public.notes values (1, '22222222-2222-2222-2222-222222222222', 'not hers'),
                                                       (2, '{alice}', 'hers')"
        ))
        .await?;
    let change = loop {
        let m = next().await;
        if m["event"] == "postgres_changes" {
            break m;
        }
    };
    assert_eq!(change["payload"]["data"]["record"]["body"], "hers");
    Ok(())
}
