//! The gateway's `/metrics`: what each SocketHub counts, and the Prometheus text the Worker
//! renders from every hub's counts, labelled by tenant.
//!
//! Counters count since the hub last started (an evicted hub starts again from its last saved
//! counts; see the gateway's `hub/metrics.rs`); Prometheus' `rate()` handles resets.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// One hub's counts: gauges of the moment and counters since it started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HubCounts {
    /// Sockets connected now.
    pub sockets: u64,
    /// Channels joined now (a socket on two topics counts twice).
    pub channels: u64,
    pub joins: u64,
    /// Frames received from sockets.
    pub messages_in: u64,
    /// Frames sent to sockets.
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Frames delivered to sockets by kind: `broadcast`, `presence`, `postgres_changes`.
    pub deliveries: BTreeMap<String, u64>,
    /// Joins refused, by upstream's error code (`ChannelRateLimitReached`, `Unauthorized`, ...).
    pub refused_joins: BTreeMap<String, u64>,
    /// Connections refused at the upgrade, by reason (`InvalidJWTToken`, `MissingAPIKey`, ...).
    pub refused_connections: BTreeMap<String, u64>,
}

impl HubCounts {
    /// Adds another hub's counts to these (a tenant's hubs summed).
    pub fn add(&mut self, other: &HubCounts) {
        self.sockets += other.sockets;
        self.channels += other.channels;
        self.joins += other.joins;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for (mine, theirs) in [
            (&mut self.deliveries, &other.deliveries),
            (&mut self.refused_joins, &other.refused_joins),
            (&mut self.refused_connections, &other.refused_connections),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }
}

/// The upstream error code that opens a join error text (`Code: text`), or `Unknown`.
pub fn refusal_code(reason: &str) -> &str {
    match reason.split_once(": ") {
        Some((code, _)) if !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric()) => code,
        _ => "Unknown",
    }
}

/// Prometheus text exposition of every tenant's counts (tenants in name order).
pub fn render(tenants: &BTreeMap<String, HubCounts>) -> String {
    type Value = fn(&HubCounts) -> u64;
    let simple: [(&str, &str, &str, Value); 7] = [
        ("sluice_connected_sockets", "gauge", "Sockets connected now", |c| {
            c.sockets
        }),
        ("sluice_joined_channels", "gauge", "Channels joined now", |c| c.channels),
        ("sluice_joins_total", "counter", "Channel joins admitted", |c| c.joins),
        (
            "sluice_messages_in_total",
            "counter",
            "Frames received from sockets",
            |c| c.messages_in,
        ),
        ("sluice_messages_out_total", "counter", "Frames sent to sockets", |c| {
            c.messages_out
        }),
        ("sluice_bytes_in_total", "counter", "Bytes received from sockets", |c| {
            c.bytes_in
        }),
        ("sluice_bytes_out_total", "counter", "Bytes sent to sockets", |c| {
            c.bytes_out
        }),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in simple {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (tenant, counts) in tenants {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", escape(tenant), value(counts));
        }
    }
    type Labelled = fn(&HubCounts) -> &BTreeMap<String, u64>;
    let labelled: [(&str, &str, &str, Labelled); 3] = [
        (
            "sluice_deliveries_total",
            "kind",
            "Frames delivered to sockets, by kind",
            |c| &c.deliveries,
        ),
        (
            "sluice_refused_joins_total",
            "reason",
            "Joins refused, by error code",
            |c| &c.refused_joins,
        ),
        (
            "sluice_refused_connections_total",
            "reason",
            "Connections refused, by reason",
            |c| &c.refused_connections,
        ),
    ];
    for (name, label, help, values) in labelled {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (tenant, counts) in tenants {
            for (key, n) in values(counts) {
                let _ = writeln!(
                    out,
                    "{name}{{tenant=\"{}\",{label}=\"{}\"}} {n}",
                    escape(tenant),
                    escape(key)
                );
            }
        }
    }
    out
}

/// A label value as the exposition format wants it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn tenants_sum_their_hubs_and_render_with_labels() {
        let mut a = HubCounts {
            sockets: 2,
            joins: 3,
            ..HubCounts::default()
        };
        a.refused_joins.insert("ChannelRateLimitReached".into(), 1);
        let mut b = HubCounts {
            sockets: 1,
            ..HubCounts::default()
        };
        b.refused_joins.insert("ChannelRateLimitReached".into(), 2);
        b.deliveries.insert("broadcast".into(), 5);
        a.add(&b);
        assert_eq!(a.sockets, 3);
        assert_eq!(a.refused_joins["ChannelRateLimitReached"], 3);
        let text = render(&BTreeMap::from([("t\"1".to_string(), a)]));
        assert!(text.contains("# TYPE sluice_connected_sockets gauge\nsluice_connected_sockets{tenant=\"t\\\"1\"} 3\n"));
        assert!(text.contains("sluice_refused_joins_total{tenant=\"t\\\"1\",reason=\"ChannelRateLimitReached\"} 3\n"));
        assert!(text.contains("sluice_deliveries_total{tenant=\"t\\\"1\",kind=\"broadcast\"} 5\n"));
    }

    #[test]
    fn refusal_codes() {
        assert_eq!(
            refusal_code("ChannelRateLimitReached: Too many channels"),
            "ChannelRateLimitReached"
        );
        assert_eq!(
            refusal_code("Unauthorized: You do not have permissions to read from this Channel topic: a"),
            "Unauthorized"
        );
        assert_eq!(refusal_code("Too many connected users"), "Unknown");
    }
}
