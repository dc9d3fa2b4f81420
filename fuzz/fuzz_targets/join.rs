//! A `phx_join`'s topic and config as the hub reads them. Input: the topic, a newline, the join
//! payload (JSON). Every `postgres_changes` binding is parsed as the replicator receives it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice_shared::bindings;
use sluice_shared::join::{parse_join, parse_replay, parse_topic, sub_topic};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (topic, payload) = text.split_once('\n').unwrap_or((text, "{}"));
    let _ = (parse_topic(topic), sub_topic(topic));
    let Ok(payload) = serde_json::from_str::<Value>(payload) else { return };
    let config = parse_join(&payload);
    let _ = parse_replay(&payload);
    if let Some(list) = payload.pointer("/config/postgres_changes").and_then(Value::as_array) {
        for binding in list.iter().filter_map(Value::as_object) {
            let id = bindings::binding_id(binding);
            assert!(id < 1 << 31, "a binding id is below 2^31");
            if let Ok(params) = bindings::parse(binding) {
                let _ = bindings::params_to_log(&params);
            }
        }
    }
    let _ = config;
});
