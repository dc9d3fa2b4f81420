//! The presence registry of one channel (docs/protocol.md 6), kept by its Channel Durable Object.
//!
//! Each (hub, socket) tracks at most one meta under its channel's presence key. Every change yields
//! a [`Diff`] for all members; a changed meta is a leave of the old one plus a join of the new one
//! carrying `phx_ref_prev`. `phx_ref`s are passed in (random in production, fixed in tests).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Where a presence lives: the hub and its socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub hub: String,
    pub socket: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    owner: Owner,
    key: String,
    phx_ref: String,
    meta: Map<String, Value>,
}

impl Entry {
    /// The meta as clients see it: `phx_ref` (and `phx_ref_prev` on updates) plus the user's keys.
    fn client_meta(&self, prev_ref: Option<&str>) -> Value {
        let mut out = Map::new();
        out.insert("phx_ref".into(), self.phx_ref.clone().into());
        if let Some(prev) = prev_ref {
            out.insert("phx_ref_prev".into(), prev.into());
        }
        for (k, v) in &self.meta {
            if k != "phx_ref" && k != "phx_ref_prev" {
                out.insert(k.clone(), v.clone());
            }
        }
        Value::Object(out)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    entries: Vec<Entry>,
}

/// A `presence_diff` payload: `{joins: {key: {metas: [...]}}, leaves: {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub joins: Map<String, Value>,
    pub leaves: Map<String, Value>,
}

impl Diff {
    fn add(side: &mut Map<String, Value>, key: &str, meta: Value) {
        let entry = side.entry(key.to_string()).or_insert_with(|| json!({"metas": []}));
        entry["metas"].as_array_mut().expect("metas is an array").push(meta);
    }

    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    pub fn to_payload(&self) -> Value {
        json!({"joins": self.joins, "leaves": self.leaves})
    }
}

impl Registry {
    /// Tracks (or updates) `owner`'s meta under `key`. `None` when nothing changed.
    pub fn track(&mut self, owner: Owner, key: &str, meta: Map<String, Value>, new_ref: String) -> Option<Diff> {
        let mut diff = Diff::default();
        let mut prev_ref = None;
        if let Some(i) = self.entries.iter().position(|e| e.owner == owner) {
            let old = &self.entries[i];
            if old.key == key && old.meta == meta {
                return None;
            }
            Diff::add(&mut diff.leaves, &old.key, old.client_meta(None));
            prev_ref = (old.key == key).then(|| old.phx_ref.clone());
            self.entries.remove(i);
        }
        let entry = Entry {
            owner,
            key: key.to_string(),
            phx_ref: new_ref,
            meta,
        };
        Diff::add(&mut diff.joins, key, entry.client_meta(prev_ref.as_deref()));
        self.entries.push(entry);
        Some(diff)
    }

    /// Removes the presences matching `owned` (a socket's, or a whole hub's). `None` when none.
    pub fn untrack(&mut self, owned: impl Fn(&Owner) -> bool) -> Option<Diff> {
        let mut diff = Diff::default();
        self.entries.retain(|e| {
            if owned(&e.owner) {
                Diff::add(&mut diff.leaves, &e.key, e.client_meta(None));
                false
            } else {
                true
            }
        });
        (!diff.is_empty()).then_some(diff)
    }

    /// The `presence_state` payload: every key with its metas, oldest first.
    pub fn state(&self) -> Value {
        let mut state = Map::new();
        for e in &self.entries {
            Diff::add(&mut state, &e.key, e.client_meta(None));
        }
        Value::Object(state)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A `phx_ref` from 12 random bytes: url-safe base64 without padding, 16 characters.
pub fn phx_ref(random: [u8; 12]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    random
        .chunks(3)
        .flat_map(|c| {
            let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
            [18, 12, 6, 0].map(|shift| ALPHABET[((n >> shift) & 63) as usize] as char)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn owner(hub: &str, socket: &str) -> Owner {
        Owner {
            hub: hub.into(),
            socket: socket.into(),
        }
    }

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn first_track_is_a_join() {
        let mut r = Registry::default();
        let d = r
            .track(owner("h1", "s1"), "ana", meta(json!({"name": "Ana"})), "R1".into())
            .unwrap();
        assert_eq!(
            d.to_payload(),
            json!({"joins": {"ana": {"metas": [{"phx_ref": "R1", "name": "Ana"}]}}, "leaves": {}})
        );
        assert_eq!(r.state(), json!({"ana": {"metas": [{"phx_ref": "R1", "name": "Ana"}]}}));
    }

    #[test]
    fn identical_track_is_a_no_op_and_update_is_leave_plus_join() {
        let mut r = Registry::default();
        r.track(owner("h1", "s1"), "ana", meta(json!({"s": "on"})), "R1".into());
        assert_eq!(
            r.track(owner("h1", "s1"), "ana", meta(json!({"s": "on"})), "R2".into()),
            None
        );
        let d = r
            .track(owner("h1", "s1"), "ana", meta(json!({"s": "away"})), "R3".into())
            .unwrap();
        assert_eq!(
            d.to_payload(),
            json!({"joins": {"ana": {"metas": [{"phx_ref": "R3", "phx_ref_prev": "R1", "s": "away"}]}},
                   "leaves": {"ana": {"metas": [{"phx_ref": "R1", "s": "on"}]}}})
        );
        assert_eq!(r.state(), json!({"ana": {"metas": [{"phx_ref": "R3", "s": "away"}]}}));
    }

    #[test]
    fn several_sockets_share_a_key() {
        let mut r = Registry::default();
        r.track(owner("h1", "s1"), "ana", meta(json!({"d": 1})), "R1".into());
        r.track(owner("h2", "s9"), "ana", meta(json!({"d": 2})), "R2".into());
        assert_eq!(r.state()["ana"]["metas"].as_array().unwrap().len(), 2);
        let d = r.untrack(|o| o.hub == "h2").unwrap();
        assert_eq!(
            d.to_payload(),
            json!({"joins": {}, "leaves": {"ana": {"metas": [{"phx_ref": "R2", "d": 2}]}}})
        );
        assert_eq!(r.untrack(|o| o.hub == "h2"), None);
        assert!(!r.is_empty());
    }

    #[test]
    fn user_cannot_forge_refs() {
        let mut r = Registry::default();
        r.track(
            owner("h", "s"),
            "k",
            meta(json!({"phx_ref": "mine", "x": 1})),
            "R1".into(),
        );
        assert_eq!(r.state(), json!({"k": {"metas": [{"phx_ref": "R1", "x": 1}]}}));
    }

    #[test]
    fn refs_are_16_url_safe_chars() {
        let r = phx_ref([0xff; 12]);
        assert_eq!(r, "________________");
        assert_eq!(phx_ref([0; 12]), "AAAAAAAAAAAAAAAA");
        assert_eq!(phx_ref([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]).len(), 16);
    }
}
