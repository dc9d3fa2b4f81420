//! Row changes as the stream decodes them: the table they are on (as pgoutput's Relation message
//! describes it), the action, and the old and new rows' values as text.

use std::sync::Arc;

use sluice_shared::bindings::Action;
use sluice_shared::filter::Cell;
use sluice_shared::position::Lsn;

/// A table as pgoutput's Relation message describes it.
#[derive(Debug)]
pub struct Relation {
    pub relid: u32,
    pub schema: String,
    pub table: String,
    pub columns: Vec<RelColumn>,
}

#[derive(Debug)]
pub struct RelColumn {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the primary key with REPLICA IDENTITY DEFAULT).
    pub identity: bool,
}

impl Relation {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One column's value in a tuple.
#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    Null,
    Text(String),
    /// An unchanged TOASTed value pgoutput did not send.
    Unchanged,
}

#[derive(Debug)]
pub struct RowChange {
    /// End LSN of the transaction.
    pub lsn: Lsn,
    /// Place in the transaction.
    pub seq: u32,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_micros: i64,
    pub relation: Arc<Relation>,
    pub action: Action,
    /// INSERT and UPDATE.
    pub new: Option<Vec<Datum>>,
    /// DELETE always; UPDATE when the identity changed or is FULL.
    pub old: Option<Vec<Datum>>,
    /// `old` holds only the identity columns (REPLICA IDENTITY DEFAULT/INDEX), the rest NULL.
    pub old_is_key: bool,
}

impl RowChange {
    /// A column's value as filters see it: the new row's (an unchanged TOAST value from the old
    /// row when it has it), or for DELETE the old row's identity.
    pub fn cell(&self, index: usize) -> Cell<'_> {
        let from_old = |i: usize| match self.old_value(i) {
            Some(Datum::Text(t)) => Cell::Text(t),
            Some(Datum::Null) => Cell::Null,
            _ => Cell::Absent,
        };
        match (&self.new, self.action) {
            (_, Action::Delete) | (None, _) => from_old(index),
            (Some(new), _) => match new.get(index) {
                Some(Datum::Text(t)) => Cell::Text(t),
                Some(Datum::Null) => Cell::Null,
                Some(Datum::Unchanged) => from_old(index),
                None => Cell::Absent,
            },
        }
    }

    /// The old row's value of a column, if the old row carries it (a key-only old row carries
    /// only identity columns).
    pub fn old_value(&self, index: usize) -> Option<&Datum> {
        let identity = self.relation.columns.get(index)?.identity;
        if self.old_is_key && !identity {
            return None;
        }
        self.old.as_ref()?.get(index)
    }

    /// The primary-key values (texts) of the row, in `pk` order; `None` if one is missing.
    pub fn key(&self, pk: &[usize]) -> Option<Vec<String>> {
        pk.iter()
            .map(|&i| match self.cell(i) {
                Cell::Text(t) => Some(t.to_string()),
                _ => None,
            })
            .collect()
    }
}
