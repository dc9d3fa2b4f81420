//! Tenant limits (docs/protocol.md 7): their configuration, upstream's defaults, and the rate counters
//! that enforce the per-second ones.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One tenant's limits, with upstream's field names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_concurrent_users: u32,
    pub max_joins_per_second: u32,
    pub max_channels_per_client: u32,
    pub max_events_per_second: u32,
    pub max_presence_events_per_second: u32,
    pub max_client_presence_events_per_window: u32,
    pub client_presence_window_ms: u64,
    pub max_payload_size_in_kb: u32,
    /// Bytes per second a tenant's sockets send and receive, together. Upstream (2.129) stores it
    /// and does not enforce it; sluice does, like `max_events_per_second`.
    pub max_bytes_per_second: u32,
    /// A tenant setting rather than a limit: refuse joins of public channels.
    pub private_only: bool,
    /// A tenant setting: presence is on for every channel, whether or not the client enables it.
    pub presence_enabled: bool,
    /// A tenant setting (sluice's own): the roles clients' tokens may carry; a token for any other
    /// is refused at connect, join, `access_token` and REST broadcast.
    pub allowed_roles: Vec<String>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_concurrent_users: 200,
            max_joins_per_second: 100,
            max_channels_per_client: 100,
            max_events_per_second: 100,
            max_presence_events_per_second: 1000,
            max_client_presence_events_per_window: 5,
            client_presence_window_ms: 30_000,
            max_payload_size_in_kb: 3000,
            max_bytes_per_second: 100_000,
            private_only: false,
            presence_enabled: false,
            allowed_roles: crate::jwt::DEFAULT_ALLOWED_ROLES.map(String::from).to_vec(),
        }
    }
}

impl Limits {
    /// The limits of `tenant` from a `TENANT_LIMITS` document: `{"*": {...}, "<tenant>": {...}}`,
    /// where `*` applies to every tenant and a tenant's own entry overrides it field by field.
    pub fn for_tenant(config: Option<&str>, tenant: &str) -> Result<Limits, String> {
        let Some(config) = config.filter(|c| !c.trim().is_empty()) else {
            return Ok(Limits::default());
        };
        let doc: Value = serde_json::from_str(config).map_err(|e| format!("TENANT_LIMITS is not JSON: {e}"))?;
        let mut merged = serde_json::to_value(Limits::default()).expect("limits serialize");
        for key in ["*", tenant] {
            if let Some(Value::Object(fields)) = doc.get(key) {
                for (k, v) in fields {
                    if merged.get(k).is_none() {
                        return Err(format!("TENANT_LIMITS[{key:?}]: unknown limit {k:?}"));
                    }
                    merged[k] = v.clone();
                }
            }
        }
        let limits: Limits = serde_json::from_value(merged).map_err(|e| format!("TENANT_LIMITS: {e}"))?;
        limits.checked().map_err(|e| format!("TENANT_LIMITS: {e}"))
    }

    /// These limits, or what is wrong with them (a value serde cannot catch).
    pub fn checked(self) -> Result<Limits, String> {
        if self.allowed_roles.is_empty() {
            return Err(
                "allowed_roles must list at least one role (default: anon, authenticated, service_role)".into(),
            );
        }
        // Postgres role names are at most 63 bytes; an empty or longer one can never match.
        if let Some(bad) = self.allowed_roles.iter().find(|r| r.is_empty() || r.len() > 63) {
            return Err(format!(
                "allowed_roles: {bad:?} is not a Postgres role name (1 to 63 bytes)"
            ));
        }
        Ok(self)
    }

    /// Upstream's size check: over `max_payload_size_in_kb * 1000 + 500` bytes is too big.
    pub fn payload_too_big(&self, bytes: usize) -> bool {
        bytes > self.max_payload_size_in_kb as usize * 1000 + 500
    }
}

/// Events per second averaged over the last minute, in 5-second buckets (as upstream's rate
/// counters). "Exceeded" while the average is over the limit.
#[derive(Clone, Debug, Default)]
pub struct RateCounter {
    /// (bucket start ms, count), oldest first, at most 12.
    buckets: Vec<(u64, u64)>,
}

const BUCKET_MS: u64 = 5_000;
const WINDOW_BUCKETS: usize = 12;

impl RateCounter {
    pub fn add(&mut self, now_ms: u64, n: u64) {
        let start = now_ms - now_ms % BUCKET_MS;
        match self.buckets.last_mut() {
            Some((s, count)) if *s == start => *count += n,
            _ => self.buckets.push((start, n)),
        }
        self.trim(now_ms);
    }

    /// The average rate over the window, per second. A young counter averages over at least one
    /// bucket, so a burst counts in full from the first second.
    pub fn per_second(&mut self, now_ms: u64) -> f64 {
        self.trim(now_ms);
        let Some((first, _)) = self.buckets.first() else {
            return 0.0;
        };
        let span_ms = (now_ms.saturating_sub(*first)).clamp(BUCKET_MS, BUCKET_MS * WINDOW_BUCKETS as u64);
        let total: u64 = self.buckets.iter().map(|(_, c)| c).sum();
        total as f64 * 1000.0 / span_ms as f64
    }

    pub fn exceeds(&mut self, now_ms: u64, limit: u32) -> bool {
        self.per_second(now_ms) > f64::from(limit)
    }

    fn trim(&mut self, now_ms: u64) {
        let oldest = now_ms.saturating_sub(BUCKET_MS * WINDOW_BUCKETS as u64);
        self.buckets.retain(|(start, _)| start + BUCKET_MS > oldest);
    }
}

/// The rate counters of one hub (sluice counts per hub, see README "Limits").
#[derive(Clone, Debug, Default)]
pub struct Rates {
    /// Messages received from and delivered to channels.
    pub events: RateCounter,
    pub presence: RateCounter,
    pub joins: RateCounter,
    /// Bytes of frames received from and sent to sockets.
    pub bytes: RateCounter,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Limits::for_tenant(None, "t").unwrap(), Limits::default());
        let config =
            r#"{"*": {"max_events_per_second": 10, "max_channels_per_client": 3}, "t": {"max_events_per_second": 20}}"#;
        let t = Limits::for_tenant(Some(config), "t").unwrap();
        assert_eq!(
            (
                t.max_events_per_second,
                t.max_channels_per_client,
                t.max_concurrent_users
            ),
            (20, 3, 200)
        );
        assert_eq!(
            Limits::for_tenant(Some(config), "other").unwrap().max_events_per_second,
            10
        );
        assert!(Limits::for_tenant(Some(r#"{"*": {"max_things": 1}}"#), "t")
            .unwrap_err()
            .contains("unknown limit \"max_things\""));
        assert!(Limits::for_tenant(Some(r#"{"*": {"max_events_per_second": "x"}}"#), "t").is_err());
    }

    #[test]
    fn allowed_roles_default_to_the_api_roles_and_are_checked() {
        assert_eq!(
            Limits::default().allowed_roles,
            ["anon", "authenticated", "service_role"]
        );
        let custom = Limits::for_tenant(Some(r#"{"t": {"allowed_roles": ["anon", "reader"]}}"#), "t").unwrap();
        assert_eq!(custom.allowed_roles, ["anon", "reader"]);
        let empty = Limits::for_tenant(Some(r#"{"*": {"allowed_roles": []}}"#), "t").unwrap_err();
        assert!(empty.contains("allowed_roles must list at least one role"), "{empty}");
        let long = format!(r#"{{"*": {{"allowed_roles": ["{}"]}}}}"#, "r".repeat(64));
        assert!(Limits::for_tenant(Some(&long), "t")
            .unwrap_err()
            .contains("is not a Postgres role name"));
    }

    #[test]
    fn payload_size_rule() {
        let l = Limits {
            max_payload_size_in_kb: 1,
            ..Limits::default()
        };
        assert!(!l.payload_too_big(1500));
        assert!(l.payload_too_big(1501));
    }

    #[test]
    fn rates_average_over_the_window() {
        let mut r = RateCounter::default();
        for _ in 0..30 {
            r.add(1_000, 1);
        }
        // 30 events in the first bucket: 6/s over the minimum 5 s span.
        assert_eq!(r.per_second(1_500), 6.0);
        assert!(r.exceeds(1_500, 5));
        assert!(!r.exceeds(1_500, 6));
        // A minute later they have aged out.
        assert_eq!(r.per_second(70_000), 0.0);
        // Spread over 20 s: 30 events / 20 s.
        r.add(100_000, 10);
        r.add(110_000, 10);
        r.add(120_000, 10);
        assert_eq!(r.per_second(120_000), 1.5);
    }
}
