//! The REST broadcast API's requests: `POST /api/broadcast` bodies, and the single-message route
//! `/api/broadcast/:topic/events/:event` with its body. Input: one byte (0: a batch body; else a
//! single message), then for a batch the body; for a single message the path, a newline, the
//! content type, a newline, the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_shared::rest::{parse_batch, single_broadcast, single_route};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode == 0 {
        if let Ok(messages) = parse_batch(rest) {
            assert!(messages.iter().all(|m| !m.topic.is_empty()), "a batch message has a topic");
        }
        return;
    }
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let path = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("");
    let content_type = parts.next().and_then(|c| std::str::from_utf8(c).ok());
    let body = parts.next().unwrap_or_default();
    if let Some((_topic, event)) = single_route(path) {
        let _ = single_broadcast(&event, content_type, body);
    }
});
