//! From the URL a user has (`https://<ref>.supabase.co`, `http://127.0.0.1:8787`, or a full
//! WebSocket URL) to the two the client uses, as supabase-js and realtime-js build them.

use sluice_shared::frame::Vsn;
use url::Url;

use crate::Error;

/// `wss://host/realtime/v1/websocket?apikey=…&vsn=…[&log_level=…]`. A URL already ending in
/// `/websocket` keeps its path; one ending in `/realtime/v1` gets `/websocket`; any other gets
/// `realtime/v1/websocket` appended (supabase-js: `new URL('realtime/v1', url)`).
pub(crate) fn websocket_url(base: &str, api_key: &str, vsn: Vsn, log_level: Option<&str>) -> Result<Url, Error> {
    let mut url = Url::parse(base).map_err(|e| Error::BadUrl(format!("{base}: {e}")))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(Error::BadUrl(format!("{base}: the scheme must be http(s) or ws(s), not {other}"))),
    };
    url.set_scheme(scheme)
        .map_err(|()| Error::BadUrl(format!("{base}: cannot use the scheme {scheme}")))?;
    let path = url.path().trim_end_matches('/').to_string();
    let path = if path.ends_with("/websocket") {
        path
    } else if path.ends_with("/realtime/v1") {
        format!("{path}/websocket")
    } else {
        format!("{path}/realtime/v1/websocket")
    };
    url.set_path(&path);
    let vsn = match vsn {
        Vsn::V1 => "1.0.0",
        Vsn::V2 => "2.0.0",
    };
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !matches!(k.as_ref(), "apikey" | "vsn" | "log_level"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut query = url.query_pairs_mut();
        query.clear();
        query.extend_pairs(kept);
        query.append_pair("apikey", api_key).append_pair("vsn", vsn);
        if let Some(level) = log_level {
            query.append_pair("log_level", level);
        }
    }
    Ok(url)
}

/// The REST broadcast endpoint for a WebSocket URL (realtime-js `httpEndpointURL`): `ws`→`http`,
/// `/socket/websocket`, `/socket` or `/websocket` removed, `/api/broadcast` appended, no query.
pub(crate) fn broadcast_url(websocket: &Url) -> Url {
    let mut url = websocket.clone();
    let scheme = if url.scheme() == "wss" { "https" } else { "http" };
    // ws→http on a URL that parsed as ws cannot fail.
    let _ = url.set_scheme(scheme);
    let mut path = url.path().trim_end_matches('/').to_string();
    for tail in ["/socket/websocket", "/socket", "/websocket"] {
        if let Some(stripped) = path.strip_suffix(tail) {
            path = stripped.to_string();
            break;
        }
    }
    url.set_path(&format!("{path}/api/broadcast"));
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_url_becomes_its_realtime_socket() {
        let url = websocket_url("https://abc.supabase.co", "anon", Vsn::V2, None).unwrap();
        assert_eq!(url.as_str(), "wss://abc.supabase.co/realtime/v1/websocket?apikey=anon&vsn=2.0.0");
        let url = websocket_url("http://127.0.0.1:8787/", "k", Vsn::V1, Some("info")).unwrap();
        assert_eq!(url.as_str(), "ws://127.0.0.1:8787/realtime/v1/websocket?apikey=k&vsn=1.0.0&log_level=info");
    }

    #[test]
    fn socket_urls_keep_their_path_and_other_parameters() {
        let url = websocket_url("ws://h/realtime/v1/websocket?apikey=old&x=1", "k", Vsn::V2, None).unwrap();
        assert_eq!(url.as_str(), "ws://h/realtime/v1/websocket?x=1&apikey=k&vsn=2.0.0");
        let url = websocket_url("https://h/realtime/v1", "k", Vsn::V2, None).unwrap();
        assert_eq!(url.path(), "/realtime/v1/websocket");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(matches!(websocket_url("not a url", "k", Vsn::V2, None), Err(Error::BadUrl(_))));
        let Err(Error::BadUrl(why)) = websocket_url("ftp://h", "k", Vsn::V2, None) else {
            panic!("ftp is refused")
        };
        assert!(why.contains("http(s) or ws(s)"), "{why}");
    }

    #[test]
    fn the_broadcast_endpoint_is_derived_as_realtime_js_does() {
        let socket = websocket_url("https://abc.supabase.co", "anon", Vsn::V2, None).unwrap();
        assert_eq!(broadcast_url(&socket).as_str(), "https://abc.supabase.co/realtime/v1/api/broadcast");
        let socket = Url::parse("ws://h:1/socket/websocket?apikey=k").unwrap();
        assert_eq!(broadcast_url(&socket).as_str(), "http://h:1/api/broadcast");
    }
}
