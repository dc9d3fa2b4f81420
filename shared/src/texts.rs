//! Every text a client can see, in one place: upstream's wording, with the file of
//! supabase/realtime (2.129) each comes from, so a change upstream is one edit here. Texts that
//! are sluice's own say so. Operator-facing log lines are not here; they live where they are
//! logged. docs/protocol.md lists where each is sent.

// --- Connecting (HTTP answer to the upgrade; `lib/realtime_web/channels/user_socket.ex`) ---

/// 401: neither `apikey` nor `x-api-key`.
pub const API_KEY_MISSING: &str = "API key is missing";
/// 401 at connect for an expired token (joins say how long ago: [`token_expired_ago`]).
pub const TOKEN_EXPIRED: &str = "Token has expired";
/// 429 at connect; join error `ConnectionRateLimitReached` (`realtime_channel.ex`).
pub const TOO_MANY_USERS: &str = "Too many connected users";
/// 429 at connect; join error `ClientJoinRateLimitReached` (`realtime_channel.ex`).
pub const TOO_MANY_JOINS: &str = "Too many joins per second";
/// 500 when the server cannot verify tokens at all (no key configured).
pub const CONNECT_FAILED: &str = "Error connecting to Realtime";
/// A host whose tenant does not exist (`user_socket.ex` `error_response(:tenant_not_found)`, 404).
pub const TENANT_NOT_FOUND: &str = "Tenant not found";
/// REST API: the host names no tenant (`assign_tenant.ex`, 401).
pub const REST_TENANT_NOT_FOUND: &str = "Tenant not found in database";
/// `system` message to every channel of a tenant's sockets before they are closed: the tenant
/// was reloaded, deleted, suspended or its keys changed (`user_socket.ex` `disconnect/1`).
pub const SERVER_REQUESTED_DISCONNECT: &str = "Server requested disconnect";
/// A suspended tenant (`user_socket.ex` `error_response(:tenant_suspended)`, 403).
pub const TENANT_SUSPENDED: &str = "Realtime was disabled for this tenant";
/// 400 for a `vsn` other than 1.0.0 and 2.0.0. sluice's own (upstream's Phoenix refuses the
/// upgrade without a body).
pub const UNSUPPORTED_VSN: &str = "Unsupported vsn: use 1.0.0 or 2.0.0";
/// 426 for a plain GET on the socket path. sluice's own.
pub const EXPECTED_UPGRADE: &str = "Expected a WebSocket upgrade";

/// 431 when a connection's `x-` headers (policies' `request.headers`) total more than the limit.
/// sluice's own: it refuses rather than cut, so a policy never sees half the headers.
pub fn headers_too_big(bytes: usize, limit: usize) -> String {
    format!("x- headers total {bytes} bytes; at most {limit} are accepted")
}

// --- Closing a socket (the close frame's reason; sluice's own, upstream's Phoenix sends none) ---

/// 413 for a request body over the limit of its route (sluice's own; upstream's parser answers
/// 413 too).
pub fn body_too_large(max: usize) -> String {
    format!("Request body too large: at most {max} bytes")
}

/// Close 1000 to a socket silent for `IDLE_TIMEOUT_MS`.
pub const CLOSE_IDLE: &str = "idle timeout";
/// Close 1001 when the server disconnects a socket (e.g. too many joins per second).
pub const CLOSE_DISCONNECTED: &str = "disconnected by the server";
/// The server's answer to a client's close.
pub const CLOSE_ANSWERED: &str = "closed";
/// Close 1009 to a socket that sent a frame over `MAX_FRAME_BYTES` (not read, not parsed).
pub const CLOSE_FRAME_TOO_BIG: &str = "message too big";

// --- Tokens (`user_socket.ex`, `realtime_channel.ex`, `channels/auth/channels_authorization.ex`) ---

pub const JWT_MALFORMED: &str = "The token provided is not a valid JWT";
pub const JWT_BAD_SIGNATURE: &str = "Failed to validate JWT signature";
pub const JWT_SIGNER: &str = "Failed to generate JWT signer, check your JWT secret or JWKS configuration";
pub const JWT_ROLE_AND_EXP: &str = "Fields `role` and `exp` are required in JWT";

/// A channel's token expired (`system` error before the channel closes; join error).
pub fn token_expired_ago(seconds: i64) -> String {
    format!("Token has expired {seconds} seconds ago")
}

/// sluice's own (upstream does not read `nbf`): a token used before its `nbf`.
pub fn token_not_yet_valid(seconds: i64) -> String {
    format!("Token is not valid yet: it becomes valid in {seconds} seconds")
}

/// sluice's own: a verified token whose `role` the tenant does not let clients use.
pub fn role_not_allowed(role: &str) -> String {
    let role: String = role.chars().take(64).collect();
    format!("Role {role:?} is not allowed for clients of this project: sign tokens for one of the tenant's allowed_roles (by default anon, authenticated, service_role)")
}

/// sluice's own: a filter sluice cannot evaluate as Postgres would on the column's type
/// (`sluice_shared::filter::evaluated_exactly`); refused rather than delivered by another rule.
pub fn filter_not_exact(column: &str, op: &str, type_name: &str) -> String {
    format!("`{op}` on column {column} of type {type_name} is not supported by this server (it would not compare as Postgres does): filter on a column of a scalar type, or subscribe without this filter")
}

// --- Joining (`phx_reply` error reasons, `lib/realtime_web/channels/realtime_channel.ex`) ---

/// Phoenix's answer to a message for a topic the socket has not joined
/// (`deps/phoenix/lib/phoenix/socket.ex`).
pub const UNMATCHED_TOPIC: &str = "unmatched topic";
pub const TOPIC_NAME_REQUIRED: &str = "TopicNameRequired: You must provide a topic name";
pub const PRIVATE_ONLY: &str = "PrivateOnly: This project only allows private channels";
pub const TOO_MANY_CHANNELS: &str = "ChannelRateLimitReached: Too many channels";
pub const REPLAY_PUBLIC: &str = "UnableToReplayMessages: Replay is not allowed for public channels";
pub const REPLAY_PARAMS: &str = "UnableToReplayMessages: Replay params are not valid";

/// The join error for a limit reached, `Code: text` as upstream's `logging.ex` builds it.
pub fn join_limit(code: &str, text: &str) -> String {
    format!("{code}: {text}")
}

/// A private channel whose read policy refused the join.
pub fn unauthorized_read(sub_topic: &str) -> String {
    format!("Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic}")
}

// --- A channel shut down (`system` error, then `phx_close`; `realtime_channel.ex`) ---

pub const TOO_MANY_MESSAGES: &str = "Too many messages per second";
pub const TOO_MANY_PRESENCE_MESSAGES: &str = "Too many presence messages per second";
pub const CLIENT_PRESENCE_RATE: &str = "Client presence rate limit exceeded";
pub const TRACK_TOO_BIG: &str = "Track message size exceeded";
/// sluice's own: `max_bytes_per_second` reached (upstream does not enforce it), in the style of
/// "Too many messages per second".
pub const TOO_MANY_BYTES: &str = "Too many bytes per second";
/// `config.broadcast.replication_ready` could not be answered within the timeout.
pub const REPLICATION_NOT_READY: &str = "Replication connection was not established in time";

// --- `system` messages with status ok (`realtime_channel.ex`) ---

/// `config.broadcast.replication_ready`: the database's replication connection is up.
pub const REPLICATION_READY: &str = "Replication connection established";

/// A refreshed token no longer lets the user read a private channel.
pub fn read_permission_lost(sub_topic: &str) -> String {
    format!("You no longer have permission to read from this Channel topic: {sub_topic}")
}

// --- Messages on a joined channel (`realtime_channel.ex`, `presence_handler.ex`) ---

/// `phx_reply` error to a `presence` track whose payload is not an object.
pub const PRESENCE_NOT_A_MAP: &str = "Presence track payload must be a map";
/// `phx_reply` error (a bare string) to an acked broadcast over the payload limit
/// (`broadcast_handler.ex`).
pub const PAYLOAD_TOO_BIG: &str = "payload_size_exceeded";

// --- Postgres Changes (`system` messages with extension `postgres_changes`) ---

/// The bindings are live (`realtime_channel.ex`).
pub const SUBSCRIBED_TO_POSTGRES: &str = "Subscribed to PostgreSQL";
/// The database (through the replicator) cannot be reached (`realtime_channel.ex`,
/// `tenants/single_broadcast.ex`).
pub const DATABASE_UNREACHABLE: &str = "Realtime was unable to connect to the project database";
/// sluice's own (upstream has no such notice: it loses changes silently): changes committed while
/// the replicator protected the database's disk (its slot recreated past the configured limit, or
/// invalidated by `max_slot_wal_keep_size`) will never arrive; the client should load afresh
/// what it shows. Status `error`; the channel stays subscribed and later changes flow.
pub const CHANGES_LOST: &str =
    "Changes were lost: the replication slot was recreated to protect the database's disk; fetch the data again";
/// `lib/extensions/postgres_cdc_rls/subscriptions.ex`, with the parameters as upstream logs them.
pub fn unable_to_subscribe(params: &str) -> String {
    format!(
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [{params}]"
    )
}
/// `subscriptions.ex`: the database refused a subscription; `problem` is Postgres's reason.
pub fn subscription_exception(params: &str, problem: &str) -> String {
    format!(
        "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: [{params}]. Exception: {problem}"
    )
}
/// `subscriptions.ex`: a `filter` that does not parse; `reason` as upstream renders it.
pub fn bad_filter(reason: &str) -> String {
    format!("Error parsing `filter` params: {reason}")
}
/// `subscriptions.ex`: `select` given as something other than a list of names.
pub const BAD_SELECT: &str =
    "Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]";
/// `subscriptions.ex`: `select` with a wildcard schema or table.
pub const SELECT_ON_WILDCARD: &str =
    "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.";
/// `subscriptions.ex`: neither schema nor table; `binding` as Elixir inspects it.
pub fn no_subscription_params(binding: &str) -> String {
    format!("No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {binding}")
}

// --- REST broadcast (`lib/realtime_web/controllers/broadcast_controller.ex` and plugs) ---

/// 401 body `{"message": ...}` (`plugs/auth_tenant.ex`).
pub const REST_UNAUTHORIZED: &str = "Unauthorized";
/// 415 (`plugs/validate_broadcast_content_type.ex`).
pub const UNSUPPORTED_MEDIA_TYPE: &str = "Unsupported Media Type. Use application/json or application/octet-stream";
/// 400 for a body that is not JSON. sluice's own (upstream's Plug.Parsers answers 400 too).
pub const MALFORMED_JSON: &str = "Malformed JSON body";
