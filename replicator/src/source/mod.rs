//! The source: a persistent logical slot read with `pgoutput` over the streaming replication
//! protocol (pgwire-replication), decoded (pg_walstream) into [`Event`]s the pipeline gathers.
//!
//! - [`Source::next`] yields one decoded event; [`Source::confirm`] tells the server everything
//!   up to an LSN is delivered (the slot may release that WAL); [`Source::close`] confirms and
//!   ends the stream cleanly.
//! - [`change`]: the decoded row change and the table it is on.
//! - [`slot`]: WAL safety: the slot's retained WAL bounded, the slot recreated past the limit or
//!   when Postgres invalidated it, the gap announced.

pub mod change;
pub mod slot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_walstream::{ColumnData, LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use sluice_shared::bindings::Action;
use sluice_shared::position::Lsn;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::StreamError;
use crate::setup::MESSAGES_PUBLICATION;
use crate::subscriptions::SYNC_PREFIX;
use change::{Datum, RelColumn, Relation, RowChange};

/// What the stream says, decoded.
#[derive(Debug)]
pub enum Event {
    /// A transaction starts (commit time in microseconds since 2000-01-01 UTC).
    Begin { commit_micros: i64 },
    /// A table was (re)described: what was cached about it may be stale.
    Relation(Arc<Relation>),
    /// An INSERT, UPDATE or DELETE of the current transaction (its `lsn` is set at commit).
    Change(RowChange),
    /// The current transaction committed; its changes are at `end_lsn`.
    Commit { end_lsn: Lsn },
    /// A registration's mark (`pg_logical_emit_message` with [`SYNC_PREFIX`]) at `lsn`.
    Mark { lsn: Lsn },
    /// The server is at `wal_end` and has nothing more for now (a keepalive).
    Idle { wal_end: Lsn },
}

pub struct Source {
    client: ReplicationClient,
    decoder: Decoder,
    /// The last position confirmed on this connection.
    confirmed: Lsn,
}

/// pgoutput messages (the bytes of XLogData) into [`Event`]s: the tables' descriptions kept, the
/// changes of a transaction numbered. Pure: the fuzz targets feed it arbitrary bytes.
pub struct Decoder {
    parser: LogicalReplicationParser,
    relations: HashMap<u32, Arc<Relation>>,
    /// Changes seen in the current transaction (their `seq`).
    seq: u32,
}

impl Source {
    /// Opens the replication connection and starts streaming the slot; `with_messages`: also the
    /// publication of `realtime.messages` (Broadcast from the database), when it exists.
    pub async fn connect(config: &Config, with_messages: bool) -> Result<Source, StreamError> {
        let client = ReplicationClient::connect(replication_config(config, with_messages))
            .await
            .map_err(stream_error)?;
        info!("streaming slot {} of publication {}", config.slot, config.publication);
        Ok(Source {
            client,
            decoder: Decoder::new(),
            confirmed: Lsn::default(),
        })
    }

    /// The next event; `None` when the server ended the stream. Cancel-safe: the pipeline polls it
    /// in a `select!` and may drop it for a flush or a shutdown.
    pub async fn next(&mut self) -> Result<Option<Event>, StreamError> {
        loop {
            let Some(event) = self.client.recv().await.map_err(stream_error)? else {
                return Ok(None);
            };
            let decoded = match event {
                ReplicationEvent::Begin { commit_time_micros, .. } => {
                    self.decoder.begin();
                    Some(Event::Begin {
                        commit_micros: commit_time_micros,
                    })
                }
                ReplicationEvent::XLogData { data, .. } => self.decoder.decode(&data)?,
                ReplicationEvent::Commit { end_lsn, .. } => Some(Event::Commit {
                    end_lsn: Lsn(end_lsn.0),
                }),
                ReplicationEvent::Message { prefix, lsn, .. } if prefix == SYNC_PREFIX => {
                    Some(Event::Mark { lsn: Lsn(lsn.0) })
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => Some(Event::Idle {
                    wal_end: Lsn(wal_end.0),
                }),
                _ => None,
            };
            if let Some(event) = decoded {
                return Ok(Some(event));
            }
        }
    }

    /// Everything up to `lsn` was delivered: the server may release that WAL.
    pub fn confirm(&mut self, lsn: Lsn) {
        self.confirmed = self.confirmed.max(lsn);
        self.client.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
    }

    /// Ends the stream cleanly: waits (at most `within`) until the server has been told the last
    /// confirmed position, then sends CopyDone and lets the connection close.
    pub async fn close(mut self, within: Duration) {
        let confirmed = self.confirmed;
        let deadline = Instant::now() + within;
        let metrics = self.client.metrics();
        while metrics.last_applied_lsn().0 < confirmed.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reported = metrics.last_applied_lsn().0;
        match tokio::time::timeout(within, self.client.shutdown()).await {
            Ok(Ok(())) => info!("replication stream closed; slot confirmed up to {}", Lsn(reported)),
            Ok(Err(e)) => warn!("closing the replication stream: {e}"),
            Err(_) => warn!("the replication stream did not close within {within:?}"),
        }
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            parser: LogicalReplicationParser::with_protocol_version(1),
            relations: HashMap::new(),
            seq: 0,
        }
    }

    /// A transaction starts: its changes are numbered from 0.
    pub fn begin(&mut self) {
        self.seq = 0;
    }

    /// One pgoutput message as an event; `None` for messages the pipeline does not need.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Event>, StreamError> {
        let message = self
            .parser
            .parse_wal_message(data)
            .map_err(|e| StreamError::Decode(e.to_string()))?
            .message;
        if let Some(relation) = relation_from(&message) {
            let relation = Arc::new(relation);
            self.relations.insert(relation.relid, relation.clone());
            return Ok(Some(Event::Relation(relation)));
        }
        let change = row_change(message, &self.relations, self.seq)?;
        if change.is_some() {
            self.seq += 1;
        }
        Ok(change.map(Event::Change))
    }
}

/// A replication failure; Postgres refusing an invalidated slot ("This slot has been invalidated
/// because it exceeded the maximum reserved size") means the slot must be recreated.
fn stream_error(e: pgwire_replication::PgWireError) -> StreamError {
    match e.to_string().contains("invalidated") {
        true => StreamError::Slot(slot::Reset::Invalidated),
        false => StreamError::Replication(e),
    }
}

fn replication_config(config: &Config, with_messages: bool) -> ReplicationConfig {
    let db = &config.database;
    let password = db
        .pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    ReplicationConfig::new(
        db.host(),
        db.pg.get_user().unwrap_or("postgres"),
        password,
        db.pg.get_dbname().unwrap_or("postgres"),
        config.slot.clone(),
        // The tables' changes, and the messages of Broadcast from the database.
        std::iter::once(config.publication.clone())
            .chain(with_messages.then(|| MESSAGES_PUBLICATION.to_string()))
            .collect::<pgwire_replication::Publication>(),
    )
    .with_port(db.port())
    .with_tls(db.replication_tls())
    // Value texts in the forms `sluice_shared::pgvalue` renders and filters compare.
    .with_options(crate::db::SESSION_OPTIONS)
    // Confirm progress every second: keeps slot lag small and lets a shutting-down server's
    // walsender, which waits for the client to confirm, finish promptly.
    .with_status_interval(Duration::from_secs(1))
}

fn relation_from(message: &LogicalReplicationMessage) -> Option<Relation> {
    let LogicalReplicationMessage::Relation {
        relation_id,
        namespace,
        relation_name,
        columns,
        ..
    } = message
    else {
        return None;
    };
    Some(Relation {
        relid: *relation_id,
        schema: namespace.to_string(),
        table: relation_name.to_string(),
        columns: columns
            .iter()
            .map(|c| RelColumn {
                name: c.name.to_string(),
                type_oid: c.type_id,
                identity: c.flags & 1 == 1,
            })
            .collect(),
    })
}

/// An INSERT, UPDATE or DELETE as a [`RowChange`] (its `lsn` and commit time are set by the
/// pipeline). TRUNCATE is not a Postgres Changes event upstream either.
fn row_change(
    message: LogicalReplicationMessage,
    relations: &HashMap<u32, Arc<Relation>>,
    seq: u32,
) -> Result<Option<RowChange>, StreamError> {
    let (relid, action, new, old, old_is_key) = match message {
        LogicalReplicationMessage::Insert { relation_id, tuple } => {
            (relation_id, Action::Insert, Some(tuple), None, false)
        }
        LogicalReplicationMessage::Update {
            relation_id,
            old_tuple,
            new_tuple,
            key_type,
        } => (
            relation_id,
            Action::Update,
            Some(new_tuple),
            old_tuple,
            key_type == Some('K'),
        ),
        LogicalReplicationMessage::Delete {
            relation_id,
            old_tuple,
            key_type,
        } => (relation_id, Action::Delete, None, Some(old_tuple), key_type == 'K'),
        _ => return Ok(None),
    };
    let Some(relation) = relations.get(&relid) else {
        warn!("a change on relation {relid} arrived before its description; skipped");
        return Ok(None);
    };
    // Found by fuzzing: a row of another width than its table's description would index past
    // it. Not skipped (that would lose it): the stream is read again from the slot.
    let widths = [new.as_ref(), old.as_ref()].map(|t| t.map(|t| t.columns.len()));
    if widths.into_iter().flatten().any(|n| n != relation.columns.len()) {
        return Err(StreamError::Decode(format!(
            "a row of {}.{} has {:?} columns where its description has {}",
            relation.schema,
            relation.table,
            widths.into_iter().flatten().collect::<Vec<_>>(),
            relation.columns.len()
        )));
    }
    Ok(Some(RowChange {
        lsn: Lsn(0),
        seq,
        commit_micros: 0,
        relation: relation.clone(),
        action,
        new: new.map(datums),
        old: old.map(datums),
        old_is_key,
    }))
}

fn datums(tuple: TupleData) -> Vec<Datum> {
    tuple.columns.iter().map(datum).collect()
}

fn datum(column: &ColumnData) -> Datum {
    match column.data_type {
        b'u' => Datum::Unchanged,
        b't' => Datum::Text(String::from_utf8_lossy(column.as_bytes()).into_owned()),
        _ => Datum::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pgoutput's Relation message for `public.t (id int8 primary key, title text)`.
    fn relation() -> Vec<u8> {
        let mut m = b"R".to_vec();
        m.extend(16384u32.to_be_bytes());
        m.extend(b"public\0t\0d");
        m.extend(2u16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 20u32), (0, "title", 25)] {
            m.push(flags);
            m.extend(name.as_bytes());
            m.push(0);
            m.extend(oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }

    /// An Insert of `values` (text) into relation 16384.
    fn insert(values: &[&str]) -> Vec<u8> {
        let mut m = b"I".to_vec();
        m.extend(16384u32.to_be_bytes());
        m.push(b'N');
        m.extend((values.len() as u16).to_be_bytes());
        for v in values {
            m.push(b't');
            m.extend((v.len() as u32).to_be_bytes());
            m.extend(v.as_bytes());
        }
        m
    }

    #[test]
    fn rows_decode_against_their_description() {
        let mut decoder = Decoder::new();
        assert!(matches!(decoder.decode(&relation()), Ok(Some(Event::Relation(_)))));
        let Ok(Some(Event::Change(change))) = decoder.decode(&insert(&["1", "hello"])) else {
            panic!("an insert decodes");
        };
        assert_eq!(change.new, Some(vec![Datum::Text("1".into()), Datum::Text("hello".into())]));
    }

    #[test]
    fn a_row_narrower_than_its_description_is_an_error_not_a_panic() {
        // Found by fuzzing (fuzz/corpus/pgoutput/regression-narrow-row): rendering it panicked.
        let mut decoder = Decoder::new();
        decoder.decode(&relation()).unwrap();
        let error = decoder.decode(&insert(&["1"])).unwrap_err();
        assert!(error.to_string().contains("public.t has [1] columns where its description has 2"), "{error}");
    }
}
