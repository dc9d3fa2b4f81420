//! A broadcast round trip through a stack: raw WebSockets, and supabase-js with both protocol
//! versions.

mod common;

use common::Client;
use serde_json::json;

#[tokio::test]
async fn a_broadcast_reaches_another_socket() -> Result<(), sluice_testkit::Error> {
    let sluice = sluice_testkit::Sluice::default()
        .with_jwt_secret("a-secret-of-at-least-32-characters-long")
        .with_tenant_id("realtime-dev")
        .start()
        .await?;
    let key = sluice.anon_key().to_string();
    let config = json!({ "broadcast": { "self": false }, "presence": { "key": "" } });
    let mut alice = Client::connect(&sluice, &key).await;
    let mut bob = Client::connect(&sluice, &key).await;
    assert_eq!(alice.join("realtime:room1", config.clone(), &key).await["status"], "ok");
    assert_eq!(bob.join("realtime:room1", config, &key).await["status"], "ok");
    alice
        .send(
            "realtime:room1",
            "broadcast",
            json!({ "type": "broadcast", "event": "cursor", "payload": { "x": 1 } }),
        )
        .await;
    let got = bob.next(|m| m["event"] == "broadcast").await;
    assert_eq!(got["payload"]["event"], "cursor");
    assert_eq!(got["payload"]["payload"], json!({ "x": 1 }));
    sluice.stop().await
}

#[tokio::test]
async fn supabase_js_broadcasts_to_itself_with_both_protocol_versions() -> Result<(), sluice_testkit::Error> {
    let sluice = sluice_testkit::Sluice::default().start().await?;
    for vsn in ["1.0.0", "2.0.0"] {
        let out = common::node(
            r#"
import { createClient } from '@supabase/supabase-js';
const supabase = createClient(process.env.URL, process.env.KEY, { realtime: { vsn: process.env.VSN } });
const room = supabase.channel('room1', { config: { broadcast: { self: true } } });
const got = new Promise((resolve) => room.on('broadcast', { event: 'hello' }, (m) => resolve(m.payload)));
room.subscribe((status) => status === 'SUBSCRIBED' && room.send({ type: 'broadcast', event: 'hello', payload: { n: 42 } }));
const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('no broadcast in 20 s')), 20000));
console.log(JSON.stringify(await Promise.race([got, timeout])), supabase.realtime.vsn);
process.exit(0);
"#,
            &[("URL", sluice.url()), ("KEY", sluice.anon_key()), ("VSN", vsn)],
        )
        .await;
        assert_eq!(out.trim(), format!(r#"{{"n":42}} {vsn}"#), "vsn {vsn}");
    }
    Ok(())
}
