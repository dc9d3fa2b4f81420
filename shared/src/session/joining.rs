//! A `phx_join`: the tenant's limits, the channel's token, its config (broadcast, presence,
//! private, replay, Postgres Changes bindings), and the reply.

use super::*;

impl Session {
    pub(super) fn join(&mut self, msg: &Inbound, ctx: &mut Ctx) -> Vec<Effect> {
        let topic = msg.topic.as_str();
        let error_reply = |reason: &str| {
            frame::reply(
                msg.join_ref.as_deref(),
                msg.ref_.as_deref(),
                topic,
                false,
                json!({ "reason": reason }),
            )
        };
        let error = |reason: String| Effect::RefuseJoin(error_reply(&reason));
        let sub_topic = match parse_topic(topic) {
            Topic::Channel(sub) => sub,
            // Phoenix's own answer, not the channel's: no backoff.
            _ => return vec![Effect::Send(error_reply(texts::UNMATCHED_TOPIC))],
        };
        let mut effects = Vec::new();
        // A second join of a joined topic ends the old incarnation first.
        if let Some(old) = self.membership(topic).cloned() {
            self.channels.retain(|m| m.topic != topic);
            effects.push(Effect::leave(&old));
            effects.push(Effect::Send(frame::close(old.join_ref.as_deref(), topic)));
        }
        let payload = match &msg.payload {
            InboundPayload::Json(v) => v,
            InboundPayload::UserBroadcast(_) => &Value::Null,
        };
        let config = parse_join(payload);
        // Upstream: presence is on when the client or the tenant turns it on.
        let presence = config.presence_enabled || ctx.limits.presence_enabled;
        // The channel runs on its own access_token when it brings one, else on the socket's.
        let now_secs = ctx.now_secs();
        let token = match usable_token(config.access_token.as_deref()) {
            Some(token) => ctx
                .keys
                .verify(token, now_secs)
                .map(|claims| (claims.exp, token_tail(token), claims.all)),
            None if self.exp <= now_secs => Err(AuthError::Expired {
                seconds_ago: now_secs - self.exp,
            }),
            None => Ok((self.exp, String::new(), self.claims.clone())),
        };
        ctx.rates.joins.add(ctx.now_ms, 1);
        if sub_topic.is_empty() {
            effects.push(error(texts::TOPIC_NAME_REQUIRED.into()));
        } else if ctx.limits.private_only && !config.private {
            effects.push(error(texts::PRIVATE_ONLY.into()));
        } else if self.channels.is_empty() && ctx.users >= ctx.limits.max_concurrent_users {
            effects.push(error(texts::join_limit(
                "ConnectionRateLimitReached",
                texts::TOO_MANY_USERS,
            )));
        } else if ctx.rates.joins.exceeds(ctx.now_ms, ctx.limits.max_joins_per_second) {
            effects.push(error(texts::join_limit(
                "ClientJoinRateLimitReached",
                texts::TOO_MANY_JOINS,
            )));
            effects.push(Effect::Disconnect);
        } else if self.channels.len() >= ctx.limits.max_channels_per_client as usize {
            effects.push(error(texts::TOO_MANY_CHANNELS.into()));
        } else if let Err(err) = &token {
            effects.push(error(err.join_reason()));
        } else if config.replay.is_some() && !config.private {
            effects.push(error(texts::REPLAY_PUBLIC.into()));
        } else if config.replay.as_ref().is_some_and(|r| parse_replay(r).is_none()) {
            effects.push(error(texts::REPLAY_PARAMS.into()));
        } else {
            let (exp, token_tail, claims) = token.expect("checked above");
            let presence_key = if config.presence_key.is_empty() {
                (ctx.fresh_key)()
            } else {
                config.presence_key.clone()
            };
            self.channels.push(Membership {
                topic: topic.to_string(),
                join_ref: msg.join_ref.clone(),
                broadcast_self: config.broadcast_self,
                ack: config.broadcast_ack,
                presence_key,
                tracked: false,
                exp,
                token_tail,
                presence_window: (0, 0),
                postgres: !config.postgres_changes.is_empty(),
                private: config.private,
                presence_only: false,
                broadcast_write: None,
                presence_write: None,
            });
            // Each binding echoed as received, in order, with its id (docs/protocol.md 3.1).
            let echoed: Vec<Value> = config
                .postgres_changes
                .iter()
                .map(|binding| {
                    let mut entry = binding.clone();
                    entry.insert("id".into(), json!(binding_id(binding)));
                    Value::Object(entry)
                })
                .collect();
            effects.push(Effect::Join {
                topic: topic.to_string(),
                reply: frame::reply(
                    msg.join_ref.as_deref(),
                    msg.ref_.as_deref(),
                    topic,
                    true,
                    json!({ "postgres_changes": echoed }),
                ),
                presence_state: presence,
                replication_ready: config.replication_ready,
                postgres: (!config.postgres_changes.is_empty()).then(|| PostgresJoin {
                    bindings: config.postgres_changes.clone(),
                    claims: claims.clone(),
                }),
                private: config.private.then_some(PrivateJoin {
                    claims,
                    presence,
                    replay: config.replay.as_ref().and_then(parse_replay),
                }),
            });
        }
        // Join errors are logged whatever the socket's level (upstream's `log_error`). Lines go
        // first: a disconnect stays last.
        let lines = effects.iter().filter_map(|effect| match effect {
            Effect::RefuseJoin(reply) => self.log(LogLevel::Error, || {
                let reason = reply.payload["response"]["reason"].as_str().unwrap_or_default();
                format!("{topic}: {reason}")
            }),
            Effect::Join { .. } => self.log(LogLevel::Info, || format!("{topic}: joined")),
            _ => None,
        });
        lines.collect::<Vec<_>>().into_iter().chain(effects).collect()
    }
}
