//! One client message: decoded, handed to the socket's session, and what it decided carried out.
//! A message that waits for a private channel's policies, or for the tenant's settings to be read
//! again, holds its socket: the socket's later messages queue behind it (`sluice_shared::hold`)
//! and run in order once it is done.

use sluice_shared::frame::{self, Inbound};
use sluice_shared::session::{Ctx, Effect, LogLevel, Session};
use sluice_shared::texts;
use worker::*;

use super::sockets::socket_id_of;
use super::SocketHub;
use crate::random;

impl SocketHub {
    /// A message from a socket: handled now, or queued while the socket is held; then whatever
    /// queued behind it, in order.
    pub(super) async fn receive_message(&self, ws: &WebSocket, message: WebSocketIncomingMessage) -> Result<()> {
        let Some(id) = socket_id_of(ws) else {
            return Ok(());
        };
        let mut next = self.held.borrow_mut().arrive(&id, message);
        if next.is_some() && !(self.roster.borrow().is_some() && self.settings_fresh()) {
            // Bringing the roster or the tenant's settings up to date awaits: the socket is held
            // meanwhile, so its later messages queue behind this one and keep their order.
            self.held.borrow_mut().hold(&id);
            let ready = async {
                self.ensure_roster().await?;
                self.refresh_settings().await
            };
            if let Err(e) = ready.await {
                console_error!("socket {id}: reading the hub's state or the tenant's settings failed: {e}");
            }
        }
        while let Some(message) = next {
            if let Err(e) = self.handle_message(ws, message).await {
                console_error!("UnknownErrorOnWebSocketMessage: socket {id}: handling a message failed: {e}");
            }
            next = self.held.borrow_mut().next(&id);
        }
        Ok(())
    }

    /// Decodes one client message and carries out what the session makes of it.
    async fn handle_message(&self, ws: &WebSocket, message: WebSocketIncomingMessage) -> Result<()> {
        let Some(mut session) = self.load_session(ws).await? else {
            return Ok(());
        };
        self.last_seen
            .borrow_mut()
            .insert(session.id.clone(), Date::now().as_millis());
        let decoded = match message {
            WebSocketIncomingMessage::String(text) => {
                self.received(text.len());
                frame::decode_text(session.vsn, &text)
            }
            WebSocketIncomingMessage::Binary(bytes) => {
                self.received(bytes.len());
                frame::decode_binary(session.vsn, &bytes)
            }
        };
        let inbound = match decoded {
            Ok(inbound) => inbound,
            Err(err) => {
                // Upstream logs MalformedWebSocketMessage and keeps the socket open.
                let line = session.log_line(LogLevel::Warning, || {
                    format!("MalformedWebSocketMessage: dropped a malformed frame: {err}")
                });
                if let Some(line) = line {
                    self.log(&session, &line);
                }
                return Ok(());
            }
        };
        let before = session.channels.clone();
        let mut effects = self.handle(&mut session, inbound.clone());
        if effects.iter().any(Effect::waits_for_policies) {
            self.held.borrow_mut().hold(&session.id);
        }
        if let [Effect::CheckWrite { topic, extension }] = effects.as_slice() {
            let (topic, extension) = (topic.clone(), *extension);
            let answer = self.may_write(&session, &topic, extension).await?;
            // Unanswered: this message is refused and the next one asks again.
            session.record_write(&topic, extension, Some(answer == Some(true)));
            effects = self.handle(&mut session, inbound);
            if answer.is_none() {
                session.record_write(&topic, extension, None);
            }
        }
        let effects = self.authorize_private_joins(&mut session, effects).await?;
        if self.save(ws, &session, &before).await? {
            self.schedule_expiry(&session).await?;
        }
        if self.perform(&session, effects).await? {
            self.socket_gone(ws, Some((1001, texts::CLOSE_DISCONNECTED))).await?;
        }
        Ok(())
    }

    /// Hands one decoded message to the session.
    fn handle(&self, session: &mut Session, inbound: Inbound) -> Vec<Effect> {
        let (keys, limits) = self.settings();
        let users = self.roster().users() as u32;
        session.handle(
            inbound,
            &mut Ctx {
                now_ms: Date::now().as_millis(),
                keys: &keys,
                limits: &limits,
                rates: &mut self.rates.borrow_mut(),
                users,
                fresh_key: &mut random::uuid,
            },
        )
    }
}
