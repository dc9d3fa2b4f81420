//! The subscriptions the stream evaluates, in memory, by table. The database table
//! `sluice.subscriptions` is the durable copy: the registry is loaded from it at start and
//! changed together with it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use sluice_shared::bindings::Action;
use sluice_shared::filter::{Condition, Op};
use tokio_postgres::Row;

/// A channel of a socket on a hub: where a subscription's changes go.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    pub hub: String,
    pub socket: String,
    pub topic: String,
}

/// One binding of a channel, on one table.
#[derive(Debug)]
pub struct Sub {
    pub channel: ChannelKey,
    pub binding_id: u64,
    pub action: Action,
    pub conditions: Vec<Condition>,
    /// `None`: every column the role may select.
    pub select: Option<Vec<String>>,
    pub role: Arc<str>,
    /// The channel's claims as JSON text, as RLS policies read them (`request.jwt.claims`).
    pub claims: Arc<str>,
}

impl Sub {
    pub fn wants(&self, action: Action) -> bool {
        self.action == Action::All || self.action == action
    }
}

type Table = Arc<Vec<Arc<Sub>>>;

#[derive(Default)]
pub struct Registry {
    by_table: RwLock<HashMap<u32, Table>>,
}

impl Registry {
    /// The subscriptions on table `relid` (a snapshot: later changes do not affect it).
    pub fn for_table(&self, relid: u32) -> Option<Table> {
        self.by_table.read().expect("registry lock").get(&relid).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_table
            .read()
            .expect("registry lock")
            .values()
            .map(|t| t.len())
            .sum()
    }

    /// Replaces a channel's subscriptions with `subs` (relid, subscription).
    pub fn replace_channel(&self, channel: &ChannelKey, subs: Vec<(u32, Sub)>) {
        let mut tables = self.by_table.write().expect("registry lock");
        remove_where(&mut tables, |c| c == channel);
        for (relid, sub) in subs {
            let table = tables.entry(relid).or_default();
            Arc::make_mut(table).push(Arc::new(sub));
        }
    }

    /// Adds one subscription of a channel on table `relid` (a table published later).
    pub fn add(&self, relid: u32, sub: Sub) {
        let mut tables = self.by_table.write().expect("registry lock");
        Arc::make_mut(tables.entry(relid).or_default()).push(Arc::new(sub));
    }

    /// Removes every subscription.
    pub fn clear(&self) {
        self.by_table.write().expect("registry lock").clear();
    }

    /// Removes a channel's subscriptions, or a whole socket's when `topic` is `None`.
    pub fn remove(&self, hub: &str, socket: &str, topic: Option<&str>) {
        let mut tables = self.by_table.write().expect("registry lock");
        remove_where(&mut tables, |c| {
            c.hub == hub && c.socket == socket && topic.is_none_or(|t| t == c.topic)
        });
    }
}

fn remove_where(tables: &mut HashMap<u32, Table>, doomed: impl Fn(&ChannelKey) -> bool) {
    tables.retain(|_, subs| {
        if subs.iter().any(|s| doomed(&s.channel)) {
            *subs = Arc::new(subs.iter().filter(|s| !doomed(&s.channel)).cloned().collect());
        }
        !subs.is_empty()
    });
}

/// The columns [`sub_from_row`] reads, in order.
pub const COLUMNS: &str =
    "hub, socket, topic, binding_id, relid, action, filters, select_columns, claims, claims_role::text";

/// A subscription from its row in `sluice.subscriptions` (selected with [`COLUMNS`]).
pub fn sub_from_row(row: &Row) -> Result<(u32, Sub), String> {
    let filters: Value = row.get(6);
    let conditions = filters
        .as_array()
        .map(|list| list.iter().map(condition).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    let claims: Value = row.get(8);
    let action = Action::from_event(row.get(5));
    let sub = Sub {
        channel: ChannelKey {
            hub: row.get(0),
            socket: row.get(1),
            topic: row.get(2),
        },
        binding_id: row.get::<_, i64>(3) as u64,
        action,
        conditions,
        select: row.get(7),
        role: row.get::<_, String>(9).into(),
        claims: claims.to_string().into(),
    };
    Ok((row.get(4), sub))
}

/// A stored filter: `{column, op, negate, values}` (`values` canonical, see `sluice.canonical`).
pub(crate) fn condition(stored: &Value) -> Result<Condition, String> {
    let text = |key: &str| stored.get(key).and_then(Value::as_str).unwrap_or_default();
    let op = Op::parse(text("op")).ok_or_else(|| format!("unknown operator in stored filter {stored}"))?;
    let values = match stored.get("values").and_then(Value::as_array) {
        Some(values) => values.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        None => vec![text("value").to_string()],
    };
    let negate = stored.get("negate").and_then(Value::as_bool).unwrap_or(false);
    Condition::new(text("column"), op, negate, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(hub: &str, socket: &str, topic: &str) -> Sub {
        Sub {
            channel: ChannelKey {
                hub: hub.into(),
                socket: socket.into(),
                topic: topic.into(),
            },
            binding_id: 1,
            action: Action::All,
            conditions: Vec::new(),
            select: None,
            role: "anon".into(),
            claims: "{}".into(),
        }
    }

    #[test]
    fn replace_and_remove() {
        let r = Registry::default();
        let a = ChannelKey {
            hub: "h".into(),
            socket: "s1".into(),
            topic: "realtime:a".into(),
        };
        r.replace_channel(
            &a,
            vec![(10, sub("h", "s1", "realtime:a")), (11, sub("h", "s1", "realtime:a"))],
        );
        r.replace_channel(
            &ChannelKey {
                topic: "realtime:b".into(),
                ..a.clone()
            },
            vec![(10, sub("h", "s1", "realtime:b"))],
        );
        r.replace_channel(&a, vec![(10, sub("h", "s1", "realtime:a"))]);
        assert_eq!(r.len(), 2);
        assert!(r.for_table(11).is_none());
        let snapshot = r.for_table(10).unwrap();
        r.remove("h", "s1", Some("realtime:a"));
        assert_eq!(r.len(), 1);
        assert_eq!(snapshot.len(), 2, "a snapshot is not changed by later removals");
        r.remove("h", "s1", None);
        assert_eq!(r.len(), 0);
    }
}
