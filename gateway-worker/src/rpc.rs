//! Calls between Durable Objects. Rust Durable Objects cannot serve JS RPC, so these are HTTP
//! requests through a stub: JSON in, and the response when it is a 200.

use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::*;

/// A request's JSON body, parsed in Rust: numbers keep every digit (`Request::json` goes through
/// JavaScript numbers, which would round a `numeric` of 20 digits).
pub async fn json_body<T: DeserializeOwned>(req: &mut Request) -> Result<T> {
    Ok(serde_json::from_str(&req.text().await?)?)
}

pub async fn post_json(stub: Stub, path: &str, body: &impl Serialize) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(serde_json::to_string(body)?.into()));
    let req = Request::new_with_init(&format!("https://do{path}"), &init)?;
    let mut res = stub.fetch_with_request(req).await?;
    if res.status_code() != 200 {
        let status = res.status_code();
        return Err(Error::RustError(format!(
            "{path}: status {status}: {}",
            res.text().await.unwrap_or_default()
        )));
    }
    Ok(res)
}
