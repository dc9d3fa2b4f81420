//! [`Client`]: one WebSocket to a Realtime server, shared by its channels.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sluice_shared::frame::Vsn;
use tokio::sync::{mpsc, oneshot};
use url::Url;

use crate::channel::{Channel, ChannelBuilder, ChannelInner};
use crate::connection::{Backoff, Machine, Options};
use crate::driver::{Command, Driver, Hooks, Metric, TokenProvider};
use crate::event::HeartbeatStatus;
use crate::{endpoint, Error};

/// A connection to a Realtime server (sluice or Supabase). Cheap to clone. The connection lives
/// while a clone or one of its channels does, until [`disconnect`](Client::disconnect).
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub commands: mpsc::UnboundedSender<Command>,
    pub vsn: Vsn,
    /// One channel per topic: asking twice returns the same one while any handle of it lives.
    pub registry: tokio::sync::Mutex<HashMap<String, Weak<ChannelInner>>>,
    pub rest: Rest,
}

/// What a REST broadcast needs.
pub(crate) struct Rest {
    pub http: reqwest::Client,
    pub broadcast_url: Url,
    pub api_key: String,
    pub timeout: Duration,
    /// The current access token (the driver keeps it up to date).
    pub token: Arc<Mutex<Option<String>>>,
}

impl Shared {
    pub fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Disconnected)
    }
}

impl Client {
    /// Starts configuring a client for `url` (`https://<ref>.supabase.co`, `http://127.0.0.1:PORT`,
    /// or a full `wss://…/realtime/v1/websocket` URL) with the project's API key (`apikey`).
    pub fn builder(url: impl Into<String>, api_key: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            api_key: api_key.into(),
            access_token: None,
            provider: None,
            vsn: Vsn::V2,
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            reconnect: Backoff::reconnect(),
            rejoin: Backoff::rejoin(),
            buffer_limit: 100,
            idle_disconnect: Some(Duration::from_secs(50)),
            log_level: None,
            hooks: Hooks::default(),
        }
    }

    /// A channel on `name` (the topic without `realtime:`), to configure and subscribe.
    pub fn channel(&self, name: impl Into<String>) -> ChannelBuilder {
        ChannelBuilder::new(self.clone(), name.into())
    }

    /// A new access token for every channel: joined ones get it at once (`access_token`),
    /// later joins and REST sends carry it. `None` goes back to the API key.
    pub async fn set_auth(&self, token: impl Into<Option<String>>) -> Result<(), Error> {
        let (done, wait) = oneshot::channel();
        self.shared.send(Command::SetToken { token: token.into(), done })?;
        wait.await.map_err(|_| Error::Disconnected)
    }

    /// The channels subscribed now.
    pub async fn channels(&self) -> Vec<Channel> {
        let registry = self.shared.registry.lock().await;
        registry.values().filter_map(|c| c.upgrade()).map(|inner| Channel { inner }).collect()
    }

    /// Leaves every channel and closes the socket; nothing reconnects. Channels' streams end
    /// with `Closed(Unsubscribed)`.
    pub async fn disconnect(&self) {
        self.shared.registry.lock().await.clear();
        let (done, wait) = oneshot::channel();
        if self.shared.send(Command::Disconnect { done }).is_ok() {
            let _ = wait.await;
        }
    }
}

/// How a [`Client`] connects; every setting has realtime-js's default.
#[must_use]
pub struct ClientBuilder {
    url: String,
    api_key: String,
    access_token: Option<String>,
    provider: Option<TokenProvider>,
    vsn: Vsn,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    timeout: Duration,
    reconnect: Backoff,
    rejoin: Backoff,
    buffer_limit: usize,
    idle_disconnect: Option<Duration>,
    log_level: Option<String>,
    hooks: Hooks,
}

impl ClientBuilder {
    /// The user's JWT, sent with every join (the very first included) and REST send. Default:
    /// none, so the server uses the API key's role.
    pub fn access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(token.into());
        self
    }

    /// Where fresh tokens come from: called before connecting, on every heartbeat, and shortly
    /// before the current token expires; a changed token is pushed to every channel. Returning
    /// `None` keeps the current token.
    pub fn access_token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.provider = Some(Arc::new(move || Box::pin(provider())));
        self
    }

    /// Protocol `vsn` 1.0.0 (JSON text only) instead of the default 2.0.0 (binary broadcasts).
    pub fn protocol_v1(mut self) -> Self {
        self.vsn = Vsn::V1;
        self
    }

    /// Heartbeat interval. Default 25 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How long a heartbeat's reply may take before the connection counts as dead and is made
    /// again. Default 10 s.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = timeout;
        self
    }

    /// How long joins, acknowledged pushes, connects and REST sends may take. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Delays between reconnect attempts. Default 1, 2, 5, 10 s, then every 10 s, 10 % jitter.
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.reconnect = backoff;
        self
    }

    /// Delays between rejoins of a channel that failed. Default 1, 2, 5, 10 s, 10 % jitter.
    pub fn rejoin_backoff(mut self, backoff: Backoff) -> Self {
        self.rejoin = backoff;
        self
    }

    /// Pushes a channel keeps while it is not joined. Default 100 (realtime-js).
    pub fn push_buffer(mut self, limit: usize) -> Self {
        self.buffer_limit = limit.max(1);
        self
    }

    /// Close the socket this long after the last channel left; `None` keeps it open. Default 50 s
    /// (realtime-js: two heartbeat intervals).
    pub fn disconnect_when_idle(mut self, after: Option<Duration>) -> Self {
        self.idle_disconnect = after;
        self
    }

    /// The server's `log_level` for this connection (`info`, `warning`, `error`).
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = Some(level.into());
        self
    }

    /// Called with every heartbeat's status (realtime-js `onHeartbeat`) and round trip.
    pub fn on_heartbeat(mut self, hook: impl Fn(HeartbeatStatus, Option<Duration>) + Send + Sync + 'static) -> Self {
        self.hooks.on_heartbeat = Some(Arc::new(hook));
        self
    }

    /// Called for every message in and out, reconnect and heartbeat round trip: a place to count.
    pub fn metrics(mut self, hook: impl Fn(Metric) + Send + Sync + 'static) -> Self {
        self.hooks.metrics = Some(Arc::new(hook));
        self
    }

    /// Connects: `Ok` once the socket is open (the token provider, if any, asked first). After
    /// that the client reconnects by itself whenever the socket drops.
    pub async fn connect(self) -> Result<Client, Error> {
        let url = endpoint::websocket_url(&self.url, &self.api_key, self.vsn, self.log_level.as_deref())?;
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: then there is one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut token = self.access_token;
        if let Some(provider) = &self.provider {
            if let Some(fresh) = provider().await {
                token = Some(fresh);
            }
        }
        let options = Options {
            vsn: self.vsn,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            timeout: self.timeout,
            reconnect: self.reconnect,
            rejoin: self.rejoin,
            buffer_limit: self.buffer_limit,
            idle_disconnect: self.idle_disconnect,
        };
        let shared_token = Arc::new(Mutex::new(None));
        let (commands, receiver) = mpsc::unbounded_channel();
        let mut driver = Driver {
            machine: Machine::new(options, None),
            url: url.clone(),
            connect_timeout: self.timeout,
            commands: receiver,
            provider: self.provider,
            hooks: self.hooks,
            token: shared_token.clone(),
        };
        // Set through the driver so that its expiry is scheduled for the provider.
        driver.set_token(token);
        tokio::spawn(driver.run());
        let client = Client {
            shared: Arc::new(Shared {
                commands,
                vsn: self.vsn,
                registry: tokio::sync::Mutex::new(HashMap::new()),
                rest: Rest {
                    http: reqwest::Client::new(),
                    broadcast_url: endpoint::broadcast_url(&url),
                    api_key: self.api_key,
                    timeout: self.timeout,
                    token: shared_token,
                },
            }),
        };
        let (done, wait) = oneshot::channel();
        client.shared.send(Command::Connect { done })?;
        wait.await.map_err(|_| Error::Disconnected)??;
        Ok(client)
    }
}
