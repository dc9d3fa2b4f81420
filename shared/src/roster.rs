//! A hub's roster: which of its sockets are in which room, and so who receives a fan-out.
//!
//! A room is a topic's public or private channel ([`Room`]): the two are different rooms. The
//! roster is rebuilt from the sockets' sessions whenever a hub wakes, so it holds nothing a
//! session does not say. It is generic over the socket handle (`S`): the worker keeps its
//! WebSockets in it, tests keep numbers.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::frame::Vsn;
use crate::internal::Access;
use crate::session::Session;

/// A topic's public or private room.
pub type Room = (Access, String);

/// The room of a channel.
pub fn access(private: bool) -> Access {
    if private {
        Access::Private
    } else {
        Access::Public
    }
}

/// What is fanned out: broadcasts skip members admitted by presence read alone (they may not
/// read broadcasts); presence diffs reach every member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    BroadcastReaders,
    Everyone,
}

#[derive(Debug)]
pub struct Roster<S> {
    sockets: HashMap<String, (S, Vsn)>,
    /// Members per room.
    rooms: HashMap<Room, BTreeSet<String>>,
    /// Sockets with at least one joined channel: upstream's "users".
    users: BTreeSet<String>,
    /// Per topic, the sockets admitted to its private channel by presence read alone.
    presence_only: HashMap<String, HashSet<String>>,
}

impl<S> Default for Roster<S> {
    fn default() -> Self {
        Roster {
            sockets: HashMap::new(),
            rooms: HashMap::new(),
            users: BTreeSet::new(),
            presence_only: HashMap::new(),
        }
    }
}

impl<S> Roster<S> {
    /// Puts a socket in the rooms its session joined (replacing what was known of it).
    pub fn insert(&mut self, socket: S, session: &Session) {
        self.remove(&session.id);
        for channel in &session.channels {
            self.rooms
                .entry((access(channel.private), channel.topic.clone()))
                .or_default()
                .insert(session.id.clone());
            if channel.presence_only {
                self.presence_only
                    .entry(channel.topic.clone())
                    .or_default()
                    .insert(session.id.clone());
            }
        }
        if !session.channels.is_empty() {
            self.users.insert(session.id.clone());
        }
        self.sockets.insert(session.id.clone(), (socket, session.vsn));
    }

    /// Forgets a socket: from now on nothing is sent to it.
    pub fn remove(&mut self, socket_id: &str) {
        self.sockets.remove(socket_id);
        self.users.remove(socket_id);
        self.presence_only.retain(|_, sockets| {
            sockets.remove(socket_id);
            !sockets.is_empty()
        });
        self.rooms.retain(|_, members| {
            members.remove(socket_id);
            !members.is_empty()
        });
    }

    /// A socket still open on this hub, and its serializer.
    pub fn socket(&self, socket_id: &str) -> Option<&(S, Vsn)> {
        self.sockets.get(socket_id)
    }

    /// How many sockets are open here.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// How many channels are joined here (a socket on two topics counts twice).
    pub fn memberships(&self) -> usize {
        self.rooms.values().map(BTreeSet::len).sum()
    }

    /// How many sockets have joined at least one channel (upstream's concurrent users).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn has_members(&self, room: &Room) -> bool {
        self.rooms.contains_key(room)
    }

    /// Whether a socket is joined to `topic`, in either room.
    pub fn is_joined(&self, socket_id: &str, topic: &str) -> bool {
        [Access::Public, Access::Private].into_iter().any(|a| {
            self.rooms
                .get(&(a, topic.to_string()))
                .is_some_and(|members| members.contains(socket_id))
        })
    }

    /// A socket still open here and joined to `topic` (in either room): where a row change
    /// addressed to that channel goes. `None`: the channel is gone, its subscription can go.
    pub fn member(&self, socket_id: &str, topic: &str) -> Option<(&S, Vsn)> {
        self.is_joined(socket_id, topic)
            .then(|| self.sockets.get(socket_id))
            .flatten()
            .map(|(socket, vsn)| (socket, *vsn))
    }

    /// The members of `room` that receive a fan-out to `audience`, less those `skip` names (the
    /// sender of a broadcast without `self`, a socket that already got a message by replay).
    pub fn recipients<'a>(
        &'a self,
        room: &Room,
        audience: Audience,
        skip: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a str, &'a S, Vsn)> + 'a {
        let deaf = match audience {
            Audience::BroadcastReaders => self.presence_only.get(&room.1),
            Audience::Everyone => None,
        };
        self.rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter(move |id| !skip(id) && !deaf.is_some_and(|d| d.contains(*id)))
            .filter_map(|id| self.sockets.get(id).map(|(socket, vsn)| (id.as_str(), socket, *vsn)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Membership;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn session(id: &str, vsn: Vsn, channels: &[(&str, bool, bool)]) -> Session {
        let claims = crate::jwt::Claims {
            role: "anon".into(),
            exp: 0,
            all: serde_json::Map::new(),
        };
        let mut s = Session::new(id.into(), "t".into(), vsn, &claims);
        s.channels = channels
            .iter()
            .map(|&(topic, private, presence_only)| Membership {
                topic: topic.into(),
                private,
                presence_only,
                ..Membership::default()
            })
            .collect();
        s
    }

    fn ids<'a>(it: impl Iterator<Item = (&'a str, &'a u32, Vsn)>) -> Vec<&'a str> {
        it.map(|(id, _, _)| id).collect()
    }

    fn public(topic: &str) -> Room {
        (Access::Public, topic.into())
    }

    #[test]
    fn public_and_private_rooms_are_apart() {
        let mut r = Roster::default();
        r.insert(1, &session("a", Vsn::V2, &[("realtime:x", false, false)]));
        r.insert(2, &session("b", Vsn::V1, &[("realtime:x", true, false)]));
        assert_eq!(
            ids(r.recipients(&public("realtime:x"), Audience::Everyone, |_| false)),
            ["a"]
        );
        let private = (Access::Private, "realtime:x".to_string());
        assert_eq!(ids(r.recipients(&private, Audience::Everyone, |_| false)), ["b"]);
        assert!(r.is_joined("b", "realtime:x"));
        assert_eq!(r.users(), 2);
    }

    #[test]
    fn broadcasts_skip_presence_only_members_and_the_skipped() {
        let mut r = Roster::default();
        let private = (Access::Private, "realtime:x".to_string());
        r.insert(1, &session("reader", Vsn::V2, &[("realtime:x", true, false)]));
        r.insert(2, &session("audience", Vsn::V2, &[("realtime:x", true, true)]));
        r.insert(3, &session("sender", Vsn::V1, &[("realtime:x", true, false)]));
        let not_sender = |id: &str| id == "sender";
        assert_eq!(
            ids(r.recipients(&private, Audience::BroadcastReaders, not_sender)),
            ["reader"]
        );
        assert_eq!(
            ids(r.recipients(&private, Audience::Everyone, |_| false)),
            ["audience", "reader", "sender"]
        );
    }

    #[test]
    fn a_removed_socket_receives_nothing_and_empty_rooms_go() {
        let mut r = Roster::default();
        r.insert(1, &session("a", Vsn::V2, &[("realtime:x", false, false)]));
        r.insert(2, &session("idle", Vsn::V2, &[]));
        assert_eq!(r.users(), 1, "a socket without channels is not a user");
        r.remove("a");
        assert!(r.socket("a").is_none());
        assert!(!r.has_members(&public("realtime:x")));
        assert_eq!(
            r.recipients(&public("realtime:x"), Audience::Everyone, |_| false)
                .count(),
            0
        );
        assert_eq!(r.users(), 0);
    }

    #[test]
    fn a_change_goes_to_a_socket_only_while_it_is_joined() {
        let mut r = Roster::default();
        r.insert(1, &session("a", Vsn::V1, &[("realtime:x", true, false)]));
        assert_eq!(r.member("a", "realtime:x"), Some((&1, Vsn::V1)), "private rooms count");
        assert_eq!(r.member("a", "realtime:y"), None, "not joined to that topic");
        r.insert(1, &session("a", Vsn::V1, &[]));
        assert_eq!(r.member("a", "realtime:x"), None, "left");
        r.remove("a");
        assert_eq!(r.member("a", "realtime:x"), None, "closed");
    }

    #[test]
    fn inserting_again_replaces_the_rooms() {
        let mut r = Roster::default();
        r.insert(1, &session("a", Vsn::V2, &[("realtime:x", false, false)]));
        r.insert(1, &session("a", Vsn::V2, &[("realtime:y", false, false)]));
        assert!(!r.has_members(&public("realtime:x")));
        assert!(r.has_members(&public("realtime:y")));
    }
}
