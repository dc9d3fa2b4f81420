//! The replicator's SQL connection (tokio-postgres, TLS as [`ConnInfo`] says), reopened on first
//! use after it dropped, so a Postgres restart costs a failed request or two, not a replicator
//! restart.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::{warn, Instrument};

use crate::conninfo::ConnInfo;

/// Session settings of every connection, replication included: values print in the text forms
/// `sluice_shared::pgvalue` renders and filters compare (ISO dates, UTC). Notices are not sent:
/// the idempotent set-up's "already exists, skipping" would be logged at every start.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c client_min_messages=warning";

/// Why the first connection failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The TLS settings cannot be used (a CA file that does not read, say).
    Settings(String),
    Postgres(tokio_postgres::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Settings(e) => f.write_str(e),
            ConnectError::Postgres(e) => f.write_str(&error_text(e)),
        }
    }
}

/// An error with its cause: tokio-postgres prints only "db error" or "error performing TLS
/// handshake", and the cause says which (the server's message, an unknown issuer).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

pub struct Db {
    config: Config,
    tls: MakeRustlsConnect,
    client: Mutex<Arc<Client>>,
}

impl Db {
    pub async fn connect(info: &ConnInfo) -> Result<Db, ConnectError> {
        let mut config = info.pg.clone();
        config.options(SESSION_OPTIONS).ssl_mode(info.sql_ssl_mode());
        let tls = info.sql_connector().map_err(ConnectError::Settings)?;
        let client = open(&config, &tls).await.map_err(ConnectError::Postgres)?;
        Ok(Db {
            config,
            tls,
            client: Mutex::new(Arc::new(client)),
        })
    }

    /// A connection of its own, for transactions.
    pub async fn dedicated(&self) -> Result<Client, tokio_postgres::Error> {
        open(&self.config, &self.tls).await
    }

    /// The open client, reconnecting first if the connection has closed.
    pub async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            *client = Arc::new(open(&self.config, &self.tls).await?);
        }
        Ok(client.clone())
    }
}

async fn open(config: &Config, tls: &MakeRustlsConnect) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    tokio::spawn(
        async move {
            if let Err(e) = connection.await {
                warn!("DatabaseConnectionDown: the Postgres connection ended: {e}");
            }
        }
        .in_current_span(),
    );
    Ok(client)
}
