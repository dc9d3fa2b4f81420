//! Sockets: accepting them, their sessions (in the attachment, or in storage once too big), the
//! roster rebuilt from those sessions, sending to a socket, and a socket that goes.

use std::cell::RefMut;

use sluice_shared::frame::{self, Outbound, Vsn, WireFrame};
use sluice_shared::roster::Roster;
use sluice_shared::session::{Effect, Membership, Session};
use sluice_shared::texts;
use worker::*;

use super::traffic::Sent;
use super::{SocketHub, SESSION_HEADER};
use crate::random;

impl SocketHub {
    /// Takes a socket the Worker authenticated, unless a tenant limit refuses it.
    pub(super) fn accept(&self, req: &Request) -> Result<Response> {
        let Some(session) = req.headers().get(SESSION_HEADER)? else {
            return Response::error("SocketHub only accepts sockets from the gateway", 400);
        };
        let mut session: Session = serde_json::from_str(&session)?;
        let (_, limits) = self.settings();
        let refused = if self.roster().users() as u32 >= limits.max_concurrent_users {
            Some(("ConnectionRateLimitReached", texts::TOO_MANY_USERS))
        } else if self
            .rates
            .borrow_mut()
            .joins
            .exceeds(Date::now().as_millis(), limits.max_joins_per_second)
        {
            Some(("JoinsRateLimitReached", texts::TOO_MANY_JOINS))
        } else {
            None
        };
        if let Some((code, message)) = refused {
            console_warn!("{}: refused a connection: {code}: {message}", self.name());
            *self
                .counts
                .borrow_mut()
                .refused_connections
                .entry(code.into())
                .or_default() += 1;
            return limit_refusal(message);
        }
        session.id = socket_id();
        let pair = WebSocketPair::new()?;
        self.state.accept_web_socket(&pair.server);
        pair.server.serialize_attachment(&session)?;
        self.roster().insert(pair.server, &session);
        self.last_seen
            .borrow_mut()
            .insert(session.id.clone(), Date::now().as_millis());
        console_log!("{}: accepted socket {} ({:?})", self.name(), session.id, session.vsn);
        Response::from_websocket(pair.client)
    }

    /// Persists the session and refreshes the roster when its channels changed (says whether).
    pub(super) async fn save(&self, ws: &WebSocket, session: &Session, channels_before: &[Membership]) -> Result<bool> {
        if session.channels == channels_before {
            return Ok(false);
        }
        self.store_session(ws, session).await?;
        self.roster().insert(ws.clone(), session);
        Ok(true)
    }

    /// Changes a socket's session outside a message of its own (the alarm, a late answer):
    /// `change` decides, the session is saved, then what it decided is carried out. Says whether
    /// the socket must be disconnected.
    pub(super) async fn change_session(
        &self,
        ws: &WebSocket,
        session: &mut Session,
        change: impl FnOnce(&mut Session) -> Vec<Effect>,
    ) -> Result<bool> {
        let before = session.channels.clone();
        let effects = change(session);
        self.save(ws, session, &before).await?;
        self.perform(session, effects).await
    }

    /// A socket's session: from its attachment, or from storage if it outgrew the attachment.
    pub(super) async fn load_session(&self, ws: &WebSocket) -> Result<Option<Session>> {
        // Inline is the common case: read it as a session first (a marker fails at once).
        if let Ok(session) = ws.deserialize_attachment::<Session>() {
            return Ok(session);
        }
        match attachment_head(ws).and_then(|head| head.stored_session) {
            Some(id) => self.state.storage().get(&session_key(&id)).await,
            None => Ok(None),
        }
    }

    /// Keeps a socket's session in its attachment, or in storage when it no longer fits the
    /// attachment's 16 KiB (a socket with many channels); the attachment then says where.
    async fn store_session(&self, ws: &WebSocket, session: &Session) -> Result<()> {
        let was_stored = attachment_head(ws).is_some_and(|head| head.stored_session.is_some());
        let storage = self.state.storage();
        match ws.serialize_attachment(session) {
            Ok(()) if was_stored => storage.delete(&session_key(&session.id)).await.map(|_| ()),
            Ok(()) => Ok(()),
            Err(too_big) => {
                if !was_stored {
                    console_log!("socket {}: session kept in storage ({too_big})", session.id);
                }
                storage.put(&session_key(&session.id), session).await?;
                ws.serialize_attachment(AttachmentHead {
                    id: None,
                    stored_session: Some(session.id.clone()),
                })
            }
        }
    }

    /// A socket closed, failed, or is closed by the server: it leaves the roster (nothing more
    /// is sent to it), then the close frame `close` (code, reason) is sent if given, then it
    /// leaves its channels, releasing its presences (calls to Channels the client need not wait
    /// for).
    pub(super) async fn socket_gone(&self, ws: &WebSocket, close: Option<(u16, &str)>) -> Result<()> {
        let session = self.load_session(ws).await.ok().flatten();
        if let Some(session) = &session {
            self.roster().remove(&session.id);
            self.last_seen.borrow_mut().remove(&session.id);
            self.replayed.borrow_mut().remove(&session.id);
            self.held.borrow_mut().forget(&session.id);
        }
        if let Some((code, reason)) = close {
            // The socket may be gone already.
            let _ = ws.close(Some(code), Some(reason));
        }
        let Some(mut session) = session else {
            return Ok(());
        };
        let effects = session.close();
        self.store_session(ws, &session).await?;
        self.perform(&session, effects).await?;
        Ok(())
    }

    /// Tells every channel of every socket that the server requested a disconnect, then closes
    /// the sockets (upstream's `UserSocket.disconnect`: the tenant was reloaded, deleted or
    /// suspended, or its keys or `private_only` changed). Clients reconnect under the new settings.
    pub(super) async fn disconnect_all(&self) -> Result<()> {
        for ws in self.state.get_websockets() {
            if let Some(session) = self.load_session(&ws).await? {
                for channel in &session.channels {
                    let notice = frame::system(
                        channel.join_ref.as_deref(),
                        &channel.topic,
                        "system",
                        true,
                        texts::SERVER_REQUESTED_DISCONNECT,
                    );
                    self.push_to(&session.id, &notice);
                }
            }
            self.socket_gone(&ws, Some((1000, texts::SERVER_REQUESTED_DISCONNECT)))
                .await?;
        }
        Ok(())
    }

    /// Builds the roster from the sockets' sessions if this instance has not yet: every entry
    /// point calls this first, so [`roster`](Self::roster) always sees it built.
    pub(super) async fn ensure_roster(&self) -> Result<()> {
        if self.roster.borrow().is_some() {
            return Ok(());
        }
        let mut roster = Roster::default();
        let sockets = self.state.get_websockets();
        for ws in &sockets {
            if let Some(session) = self.load_session(ws).await? {
                roster.insert(ws.clone(), &session);
            }
        }
        console_log!("{}: rebuilt the roster from {} sockets", self.name(), sockets.len());
        self.roster.borrow_mut().get_or_insert(roster);
        Ok(())
    }

    pub(super) fn roster(&self) -> RefMut<'_, Roster<WebSocket>> {
        RefMut::map(self.roster.borrow_mut(), |slot| {
            slot.get_or_insert_with(Roster::default)
        })
    }

    /// Sends to one socket what `encode` makes of it in its serializer (nothing for `None`),
    /// unless it has left the roster (closed by the client or the server: a reply computed
    /// across an await may find its socket gone).
    pub(super) fn send_to(&self, socket_id: &str, encode: impl FnOnce(Vsn) -> Option<WireFrame>) {
        let sent = match self.roster().socket(socket_id) {
            Some((ws, vsn)) => match encode(*vsn) {
                Some(frame) => send(ws, frame),
                None => return,
            },
            None => return,
        };
        self.sent(sent, None);
    }

    /// Sends `out` to a socket still in the roster.
    pub(super) fn push_to(&self, socket_id: &str, out: &Outbound) {
        self.send_to(socket_id, |vsn| Some(WireFrame::Text(frame::encode(vsn, out))));
    }
}

/// What a socket's attachment says about itself: it holds either the whole session (`id` is
/// the session's) or, when the session outgrew it, only `stored_session`, the id under which the
/// session is in storage. Reading these two fields alone costs far less than the whole session.
#[derive(serde::Serialize, serde::Deserialize)]
struct AttachmentHead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored_session: Option<String>,
}

fn attachment_head(ws: &WebSocket) -> Option<AttachmentHead> {
    ws.deserialize_attachment().ok().flatten()
}

/// The id of the socket, from its attachment.
pub(super) fn socket_id_of(ws: &WebSocket) -> Option<String> {
    attachment_head(ws).and_then(|head| head.stored_session.or(head.id))
}

fn session_key(socket: &str) -> String {
    format!("session:{socket}")
}

/// A connection refused for a tenant limit (docs/protocol.md 1.4).
fn limit_refusal(message: &str) -> Result<Response> {
    Ok(Response::from_json(&serde_json::json!({"error": message}))?.with_status(429))
}

/// A socket id unique within its hub.
fn socket_id() -> String {
    let [a, b, c, d, e, f, g, h] = random::bytes::<8>();
    format!(
        "{:x}-{:016x}",
        Date::now().as_millis(),
        u64::from_be_bytes([a, b, c, d, e, f, g, h])
    )
}

/// Writes one frame to a socket; a socket that closed meanwhile is logged, not an error.
pub(super) fn send(ws: &WebSocket, frame: WireFrame) -> Sent {
    let (result, bytes) = match frame {
        WireFrame::Text(text) => (ws.send_with_str(&text), text.len()),
        WireFrame::Binary(bytes) => (ws.send_with_bytes(&bytes), bytes.len()),
    };
    match result {
        Ok(()) => Sent {
            frames: 1,
            bytes: bytes as u64,
        },
        Err(err) => {
            console_warn!("send failed: {err}");
            Sent::default()
        }
    }
}
