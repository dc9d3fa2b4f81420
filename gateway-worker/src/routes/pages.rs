//! `GET /`: a short page saying what this server is; `GET /inspector`: a page to watch a channel
//! live (`gateway-worker/inspector/`, built into the worker: no CDN, nothing fetched elsewhere).
//! The inspector is served only with `INSPECTOR=on`; it holds no secret (the user pastes a key).

use worker::{Env, Response, Result};

use crate::config;

const INDEX: &str = include_str!("../../inspector/index.html");
const SCRIPT: &str = include_str!("../../inspector/inspector.js");
const WIRE: &str = include_str!("../../inspector/wire.js");
const STYLE: &str = include_str!("../../inspector/inspector.css");

/// Scripts and styles from this origin only; sockets and REST calls to it.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn front(env: &Env) -> Result<Response> {
    let inspector = if config::inspector_on(env) {
        r#"<p><a href="/inspector">Open the inspector</a> to watch a channel live: presence, broadcasts and row changes.</p>"#
    } else {
        "<p>The inspector, a page to watch a channel live, is off here (its operator can turn it on with <code>INSPECTOR=on</code>).</p>"
    };
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>sluice</title></head><body>
<h1>sluice</h1>
<p>A Supabase Realtime-compatible server: Broadcast, Presence and Postgres Changes for <code>@supabase/supabase-js</code>, unmodified. Point a client's Supabase URL at this server.</p>
{inspector}
<p>Its documentation is in the <code>docs/</code> folder of the sluice repository (start with its README).</p>
</body></html>"#
    );
    page(&html, "text/html; charset=utf-8")
}

pub fn inspector(env: &Env, route: &str) -> Result<Response> {
    if !config::inspector_on(env) {
        return Response::error(
            "The inspector is off on this server: set INSPECTOR=on (a var of the worker) to serve it.",
            404,
        );
    }
    match route {
        "/inspector" | "/inspector/" => page(INDEX, "text/html; charset=utf-8"),
        "/inspector/inspector.js" => page(SCRIPT, "text/javascript; charset=utf-8"),
        "/inspector/wire.js" => page(WIRE, "text/javascript; charset=utf-8"),
        "/inspector/inspector.css" => page(STYLE, "text/css; charset=utf-8"),
        _ => Response::error("Not Found", 404),
    }
}

fn page(body: &str, content_type: &str) -> Result<Response> {
    let mut response = Response::ok(body)?;
    let headers = response.headers_mut();
    headers.set("content-type", content_type)?;
    headers.set("content-security-policy", POLICY)?;
    headers.set("x-content-type-options", "nosniff")?;
    headers.set("cache-control", "no-cache")?;
    Ok(response)
}
