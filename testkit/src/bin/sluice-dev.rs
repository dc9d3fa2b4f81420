//! `scripts/dev`: the whole stack on this machine, started by the test kit as a test would start
//! it, with the URL and keys to connect with printed; Ctrl-C (or SIGTERM) stops it.
//! `PORT` picks the gateway's port (default 8787).

use serde_json::json;
use sluice_testkit::Sluice;

/// The secrets of the local stack: fixed, so the printed keys stay valid across restarts.
const JWT_SECRET: &str = sluice_testkit::DEFAULT_JWT_SECRET;
const API_SECRET: &str = "sluice-local-admin-secret-with-at-least-32-characters";
const METRICS_SECRET: &str = "sluice-local-metrics-secret-with-at-least-32-chars";

fn sign(secret: &str, claims: serde_json::Value) -> String {
    sluice_shared::jwt::sign_hs256(claims.as_object().cloned().unwrap_or_default(), secret.as_bytes())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), sluice_testkit::Error> {
    let port = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| sluice_testkit::Error::Options(format!("PORT={p:?} is not a port number")))?,
        Err(_) => 8787,
    };
    eprintln!("==> starting the local stack");
    let stack = Sluice::default()
        .with_port(port)
        .with_jwt_secret(JWT_SECRET)
        .with_api_jwt_secret(API_SECRET)
        .with_env("METRICS_JWT_SECRET", METRICS_SECRET)
        .with_env("INSPECTOR", "on")
        .start()
        .await?;
    // A table to try Postgres Changes with.
    stack
        .sql("create table public.messages (id bigserial primary key, body text, created_at timestamptz default now())")
        .await?;
    stack.publish("public.messages").await?;
    let ten_years = 10 * 365 * 24 * 3600;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let metrics_key = sign(
        METRICS_SECRET,
        json!({ "role": "metrics", "iat": now, "exp": now + ten_years }),
    );
    let admin_key = sign(
        API_SECRET,
        json!({ "role": "supabase_admin", "iat": now, "exp": now + ten_years }),
    );
    let url = stack.url();
    println!(
        "
sluice is running (tenant {tenant}).

  Realtime URL      {url}   (WebSocket: {ws})
  inspector         {url}/inspector   (paste the anon key, Connect, Join)
  anon key          {anon}
  service-role key  {service}
  JWT secret        {secret}
  Postgres          {database}
  metrics           curl -H 'Authorization: Bearer {metrics_key}' {url}/metrics
  tenants API       curl -H 'Authorization: Bearer {admin_key}' {url}/api/tenants

Connect with supabase-js:

  import {{ createClient }} from '@supabase/supabase-js'
  const supabase = createClient('{url}', '<anon key above>')
  const room = supabase.channel('room1', {{ config: {{ broadcast: {{ self: true }} }} }})
  room.on('broadcast', {{ event: '*' }}, (msg) => console.log('got', msg))
  room.subscribe((status) => status === 'SUBSCRIBED' && room.send({{ type: 'broadcast', event: 'hello', payload: {{ at: Date.now() }} }}))

Postgres Changes (the table public.messages is in the publication):

  supabase.channel('db').on('postgres_changes', {{ event: '*', schema: 'public', table: 'messages' }}, console.log).subscribe()
  psql '{database}' -c \"insert into messages (body) values ('hi')\"

Press Ctrl-C to stop.",
        tenant = stack.tenant_id(),
        ws = stack.websocket_url(),
        anon = stack.anon_key(),
        service = stack.service_role_key(),
        secret = stack.jwt_secret(),
        database = stack.database_url(),
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| sluice_testkit::Error::Setup(format!("cannot watch for SIGTERM: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("\n==> stopping the local stack");
    stack.stop().await?;
    eprintln!("==> stopped");
    Ok(())
}
