//! A channel's presence state, synced from `presence_state` and `presence_diff` exactly as
//! realtime-js's `RealtimePresence` does it (Phoenix's `Presence.syncState`/`syncDiff`): the same
//! sequence of messages gives the same state and the same joins and leaves.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::event::ChannelEvent;

/// The presence state as users see it (realtime-js `presenceState()`): each key's presences,
/// each the tracked payload plus `presence_ref`.
pub type Presences = BTreeMap<String, Vec<Value>>;

/// The metas of each key, with their `phx_ref`s, as the server sends them.
type State = BTreeMap<String, Vec<Map<String, Value>>>;

#[derive(Debug, Default)]
pub(crate) struct Presence {
    state: State,
    /// Diffs that came before the `presence_state` of the current join, applied after it.
    pending: Vec<(State, State)>,
    /// The join whose `presence_state` this state is in sync with.
    synced_join: Option<String>,
}

impl Presence {
    /// What users see of the state.
    pub fn presences(&self) -> Presences {
        self.state
            .iter()
            .map(|(key, metas)| (key.clone(), metas.iter().map(user_view).collect()))
            .collect()
    }

    /// A `presence_state` for the join `join_ref`: the events it makes, then those of the diffs
    /// that were waiting for it, then one `PresenceSync`.
    pub fn on_state(&mut self, join_ref: Option<&str>, payload: &Value) -> Vec<ChannelEvent> {
        let new_state = parse_state(payload);
        let mut events = vec![];
        let mut joins = State::new();
        let mut leaves = State::new();
        for (key, metas) in &self.state {
            if !new_state.contains_key(key) {
                leaves.insert(key.clone(), metas.clone());
            }
        }
        for (key, new_metas) in &new_state {
            match self.state.get(key) {
                Some(current) => {
                    let joined: Vec<_> = new_metas.iter().filter(|m| !has_ref(current, m)).cloned().collect();
                    let left: Vec<_> = current.iter().filter(|m| !has_ref(new_metas, m)).cloned().collect();
                    if !joined.is_empty() {
                        joins.insert(key.clone(), joined);
                    }
                    if !left.is_empty() {
                        leaves.insert(key.clone(), left);
                    }
                }
                None => {
                    joins.insert(key.clone(), new_metas.clone());
                }
            }
        }
        self.apply(&joins, &leaves, &mut events);
        self.synced_join = Some(join_ref.unwrap_or_default().to_string());
        for (joins, leaves) in std::mem::take(&mut self.pending) {
            self.apply(&joins, &leaves, &mut events);
        }
        events.push(ChannelEvent::PresenceSync { state: self.presences() });
        events
    }

    /// A `presence_diff` while the channel's join is `join_ref`: applied (events, then a sync),
    /// or kept until that join's `presence_state` arrives.
    pub fn on_diff(&mut self, join_ref: Option<&str>, payload: &Value) -> Vec<ChannelEvent> {
        let joins = parse_state(&payload["joins"]);
        let leaves = parse_state(&payload["leaves"]);
        if self.synced_join.as_deref() != Some(join_ref.unwrap_or_default()) {
            self.pending.push((joins, leaves));
            return vec![];
        }
        let mut events = vec![];
        self.apply(&joins, &leaves, &mut events);
        events.push(ChannelEvent::PresenceSync { state: self.presences() });
        events
    }

    /// Phoenix's `syncDiff`.
    fn apply(&mut self, joins: &State, leaves: &State, events: &mut Vec<ChannelEvent>) {
        for (key, new_metas) in joins {
            let current = self.state.get(key).cloned();
            let mut metas = new_metas.clone();
            if let Some(current) = &current {
                let kept: Vec<_> = current.iter().filter(|m| !has_ref(new_metas, m)).cloned().collect();
                metas.splice(0..0, kept);
            }
            self.state.insert(key.clone(), metas);
            events.push(ChannelEvent::PresenceJoin {
                key: key.clone(),
                current: current.iter().flatten().map(user_view).collect(),
                joined: new_metas.iter().map(user_view).collect(),
            });
        }
        for (key, left_metas) in leaves {
            let Some(current) = self.state.get_mut(key) else {
                continue;
            };
            current.retain(|m| !has_ref(left_metas, m));
            events.push(ChannelEvent::PresenceLeave {
                key: key.clone(),
                current: current.iter().map(user_view).collect(),
                left: left_metas.iter().map(user_view).collect(),
            });
            if current.is_empty() {
                self.state.remove(key);
            }
        }
    }
}

/// `{key: {metas: [...]}}`; anything else of it is ignored.
fn parse_state(value: &Value) -> State {
    let Some(keys) = value.as_object() else {
        return State::new();
    };
    keys.iter()
        .map(|(key, entry)| {
            let metas = entry["metas"]
                .as_array()
                .map(|metas| metas.iter().filter_map(|m| m.as_object().cloned()).collect())
                .unwrap_or_default();
            (key.clone(), metas)
        })
        .collect()
}

fn has_ref(metas: &[Map<String, Value>], meta: &Map<String, Value>) -> bool {
    metas.iter().any(|m| m.get("phx_ref") == meta.get("phx_ref"))
}

/// realtime-js's `transformState`: `phx_ref` becomes `presence_ref`, `phx_ref_prev` goes.
fn user_view(meta: &Map<String, Value>) -> Value {
    let mut out = meta.clone();
    if let Some(r) = out.remove("phx_ref") {
        out.insert("presence_ref".into(), r);
    }
    out.remove("phx_ref_prev");
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(p: &Presence) -> Vec<(String, Vec<String>)> {
        p.presences()
            .into_iter()
            .map(|(k, v)| (k, v.iter().map(|m| m["presence_ref"].as_str().unwrap().to_string()).collect()))
            .collect()
    }

    #[test]
    fn state_then_diffs_give_phoenix_joins_and_leaves() {
        let mut p = Presence::default();
        let events = p.on_state(Some("1"), &json!({"a": {"metas": [{"phx_ref": "r1", "n": 1}]}}));
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], ChannelEvent::PresenceJoin { key, current, joined }
            if key == "a" && current.is_empty() && joined == &vec![json!({"presence_ref": "r1", "n": 1})]));
        // An update: a leave of r1 and a join of r2 (with phx_ref_prev, hidden from users).
        let events = p.on_diff(
            Some("1"),
            &json!({"joins": {"a": {"metas": [{"phx_ref": "r2", "phx_ref_prev": "r1", "n": 2}]}},
                    "leaves": {"a": {"metas": [{"phx_ref": "r1", "n": 1}]}}}),
        );
        assert_eq!(keys(&p), vec![("a".to_string(), vec!["r2".to_string()])]);
        let ChannelEvent::PresenceJoin { current, .. } = &events[0] else { panic!("{events:?}") };
        assert_eq!(current.len(), 1, "the join saw r1 still there");
        let ChannelEvent::PresenceLeave { current, left, .. } = &events[1] else { panic!("{events:?}") };
        assert_eq!(current, &vec![json!({"presence_ref": "r2", "n": 2})]);
        assert_eq!(left.len(), 1);
        // The last meta of a key leaving removes the key.
        p.on_diff(Some("1"), &json!({"joins": {}, "leaves": {"a": {"metas": [{"phx_ref": "r2"}]}}}));
        assert!(p.presences().is_empty());
    }

    #[test]
    fn diffs_before_the_state_of_a_join_wait_for_it() {
        let mut p = Presence::default();
        assert!(p
            .on_diff(Some("1"), &json!({"joins": {"b": {"metas": [{"phx_ref": "r9"}]}}, "leaves": {}}))
            .is_empty());
        p.on_state(Some("1"), &json!({"a": {"metas": [{"phx_ref": "r1"}]}}));
        assert_eq!(
            keys(&p),
            vec![("a".into(), vec!["r1".into()]), ("b".into(), vec!["r9".into()])]
        );
        // After a rejoin (join ref 2) diffs wait again, and the new state replaces what was.
        assert!(p
            .on_diff(Some("2"), &json!({"joins": {}, "leaves": {"a": {"metas": [{"phx_ref": "r1"}]}}}))
            .is_empty());
        let events = p.on_state(Some("2"), &json!({"a": {"metas": [{"phx_ref": "r1"}, {"phx_ref": "r3"}]}}));
        assert_eq!(keys(&p), vec![("a".into(), vec!["r3".into()])]);
        assert!(events.iter().any(|e| matches!(e, ChannelEvent::PresenceLeave { key, .. } if key == "b")));
    }

    #[test]
    fn existing_metas_stay_ahead_of_joined_ones() {
        let mut p = Presence::default();
        p.on_state(None, &json!({"a": {"metas": [{"phx_ref": "r1"}]}}));
        p.on_diff(None, &json!({"joins": {"a": {"metas": [{"phx_ref": "r2"}]}}, "leaves": {}}));
        assert_eq!(keys(&p), vec![("a".into(), vec!["r1".into(), "r2".into()])]);
    }
}
