//! The hold queue: while one message of a socket waits for a private channel's policies (a
//! private join, a new token, a first broadcast or track), the socket's later messages wait
//! behind it and run in order afterwards. Messages of sockets not held run at once, so a socket's
//! ordinary traffic is never serialised behind slow calls.
//!
//! The hub's loop: [`Holds::arrive`] says whether a message runs now; a message whose effects
//! wait for policies ([`crate::session::Effect::waits_for_policies`]) calls [`Holds::hold`];
//! after each message the hub runs [`Holds::next`] until it says the socket is free.

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
pub struct Holds<M> {
    /// Per held socket, the messages that arrived meanwhile.
    queues: HashMap<String, VecDeque<M>>,
}

impl<M> Default for Holds<M> {
    fn default() -> Self {
        Holds { queues: HashMap::new() }
    }
}

impl<M> Holds<M> {
    /// A message arrived: `Some` to handle it now, `None` when it queued behind a held one.
    pub fn arrive(&mut self, socket: &str, message: M) -> Option<M> {
        match self.queues.get_mut(socket) {
            Some(queue) => {
                queue.push_back(message);
                None
            }
            None => Some(message),
        }
    }

    /// The message being handled waits for policies: later ones queue until the queue drains.
    pub fn hold(&mut self, socket: &str) {
        self.queues.entry(socket.to_string()).or_default();
    }

    pub fn is_held(&self, socket: &str) -> bool {
        self.queues.contains_key(socket)
    }

    /// After a message of `socket` was handled: the next queued one to handle, or `None` when
    /// there is none (the socket is then free: its next message runs at once).
    pub fn next(&mut self, socket: &str) -> Option<M> {
        let queue = self.queues.get_mut(socket)?;
        let next = queue.pop_front();
        if next.is_none() {
            self.queues.remove(socket);
        }
        next
    }

    /// The socket is gone: its queued messages with it.
    pub fn forget(&mut self, socket: &str) {
        self.queues.remove(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn messages_of_a_free_socket_run_at_once() {
        let mut holds = Holds::default();
        assert_eq!(holds.arrive("s", 1), Some(1));
        assert_eq!(holds.next("s"), None, "nothing queued");
        assert!(!holds.is_held("s"));
    }

    #[test]
    fn a_held_socket_queues_and_drains_in_order() {
        let mut holds = Holds::default();
        assert_eq!(holds.arrive("s", 1), Some(1));
        holds.hold("s");
        assert_eq!(holds.arrive("s", 2), None);
        assert_eq!(holds.arrive("s", 3), None);
        assert_eq!(holds.arrive("other", 9), Some(9), "other sockets are not held");
        assert_eq!(holds.next("s"), Some(2));
        assert_eq!(holds.arrive("s", 4), None, "still held while draining");
        assert_eq!(holds.next("s"), Some(3));
        assert_eq!(holds.next("s"), Some(4));
        assert_eq!(holds.next("s"), None);
        assert_eq!(holds.arrive("s", 5), Some(5), "free again");
    }

    #[test]
    fn holding_again_while_draining_keeps_the_queue() {
        let mut holds = Holds::default();
        holds.hold("s");
        assert_eq!(holds.arrive("s", 2), None);
        assert_eq!(holds.arrive("s", 3), None);
        assert_eq!(holds.next("s"), Some(2));
        holds.hold("s"); // 2 waits for policies too
        assert_eq!(holds.next("s"), Some(3));
    }

    #[test]
    fn a_gone_socket_drops_its_queue() {
        let mut holds = Holds::default();
        holds.hold("s");
        holds.arrive("s", 2);
        holds.forget("s");
        assert_eq!(holds.next("s"), None);
        assert_eq!(holds.arrive("s", 3), Some(3));
    }
}
