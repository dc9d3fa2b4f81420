//! The per-hub batches: for each change, one payload per distinct view (role and `select`), each
//! with the channels that see it and the ids of their matched bindings. Pure given the matches,
//! the RLS answers and the cached catalog facts.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_shared::internal::{Change, ChangeBatch, ChangePayload, Recipient};

use super::matching::{Hit, Keys, Verdict, Visible};
use super::payload::{self, View};
use super::tables::Tables;
use crate::source::change::RowChange;
use crate::subscriptions::registry::ChannelKey;

pub(super) fn build_batches(
    stream: &str,
    batch: &[RowChange],
    hits: &[Hit],
    (visible, keys): (&Visible, &Keys),
    tables: &Tables,
) -> BTreeMap<String, ChangeBatch> {
    // change -> view key -> channel -> ids
    type Views<'a> =
        BTreeMap<(Option<&'static str>, &'a str, Option<&'a [String]>), BTreeMap<&'a ChannelKey, Vec<u64>>>;
    let mut per_change: BTreeMap<usize, Views> = BTreeMap::new();
    for hit in hits {
        let change = &batch[hit.change];
        let shown = match &hit.verdict {
            Verdict::Error(_) | Verdict::Visible => true,
            Verdict::IfVisible => {
                let context = (change.relation.relid, hit.sub.role.clone(), hit.sub.claims.clone());
                let key = keys.get(&hit.change).and_then(Option::as_ref);
                key.is_some_and(|key| visible.get(&context).is_some_and(|seen| seen.contains(key)))
            }
        };
        if !shown {
            continue;
        }
        let view_key = match hit.verdict {
            Verdict::Error(error) => (Some(error), "", None),
            _ => (None, &*hit.sub.role, hit.sub.select.as_deref()),
        };
        let ids = per_change
            .entry(hit.change)
            .or_default()
            .entry(view_key)
            .or_default()
            .entry(&hit.sub.channel)
            .or_default();
        if !ids.contains(&hit.sub.binding_id) {
            ids.push(hit.sub.binding_id);
        }
    }
    let mut per_hub: BTreeMap<String, ChangeBatch> = BTreeMap::new();
    for (index, views) in per_change {
        let change = &batch[index];
        let mut payloads_per_hub: BTreeMap<&str, Vec<ChangePayload>> = BTreeMap::new();
        for ((error, role, select), channels) in views {
            let data: Value = match error {
                Some(error) => payload::error_data(change, error),
                None => {
                    let info = tables.cached(change.relation.relid);
                    let selectable = tables.cached_selectable(change.relation.relid, role);
                    match (info, selectable) {
                        (Some(info), Some(selectable)) => payload::data(
                            change,
                            &View {
                                typnames: &info.typnames,
                                pk: &info.pk,
                                selectable: &selectable,
                                select,
                                rls: info.rls,
                            },
                        ),
                        _ => continue,
                    }
                }
            };
            let mut per_hub_recipients: BTreeMap<&str, Vec<Recipient>> = BTreeMap::new();
            for (channel, ids) in channels {
                per_hub_recipients.entry(&channel.hub).or_default().push(Recipient {
                    socket: channel.socket.clone(),
                    topic: channel.topic.clone(),
                    ids,
                });
            }
            for (hub, to) in per_hub_recipients {
                payloads_per_hub
                    .entry(hub)
                    .or_default()
                    .push(ChangePayload { data: data.clone(), to });
            }
        }
        for (hub, payloads) in payloads_per_hub {
            let hub_batch = per_hub.entry(hub.to_string()).or_insert_with(|| ChangeBatch {
                stream: stream.to_string(),
                ..ChangeBatch::default()
            });
            hub_batch.changes.push(Change {
                lsn: change.lsn,
                seq: change.seq,
                payloads,
            });
        }
    }
    per_hub
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    use serde_json::json;
    use sluice_shared::bindings::Action;
    use sluice_shared::pgvalue::oid;
    use sluice_shared::position::Lsn;

    use super::*;
    use crate::source::change::{Datum, RelColumn, Relation};
    use crate::subscriptions::registry::Sub;

    fn change(id: &str, seq: u32) -> RowChange {
        let col = |name: &str, type_oid, identity| RelColumn {
            name: name.into(),
            type_oid,
            identity,
        };
        RowChange {
            lsn: Lsn(100),
            seq,
            commit_micros: 0,
            relation: Arc::new(Relation {
                relid: 7,
                schema: "public".into(),
                table: "notes".into(),
                columns: vec![col("id", oid::INT8, true), col("body", oid::TEXT, false)],
            }),
            action: Action::Insert,
            new: Some(vec![Datum::Text(id.into()), Datum::Text(format!("note {id}"))]),
            old: None,
            old_is_key: false,
        }
    }

    fn sub(hub: &str, socket: &str, id: u64, claims: &str, select: Option<&[&str]>) -> Arc<Sub> {
        Arc::new(Sub {
            channel: ChannelKey {
                hub: hub.into(),
                socket: socket.into(),
                topic: "realtime:notes".into(),
            },
            binding_id: id,
            action: Action::All,
            conditions: Vec::new(),
            select: select.map(|cols| cols.iter().map(|c| c.to_string()).collect()),
            role: Arc::from("authenticated"),
            claims: Arc::from(claims),
        })
    }

    fn hit(change: usize, sub: &Arc<Sub>, verdict: Verdict) -> Hit {
        Hit {
            change,
            sub: sub.clone(),
            verdict,
        }
    }

    fn tables(rls: bool) -> Tables {
        let mut tables = Tables::default();
        tables.remember(7, &["int8", "text"], &[0], rls, "authenticated");
        tables
    }

    /// The batches for hits on a table without RLS.
    fn without_rls(batch: &[RowChange], hits: &[Hit]) -> BTreeMap<String, ChangeBatch> {
        build_batches(
            "1:slot",
            batch,
            hits,
            (&HashMap::new(), &HashMap::new()),
            &tables(false),
        )
    }

    /// (hub, change seq, payload record, sockets with their ids)
    type Seen = Vec<(String, u32, serde_json::Value, Vec<(String, Vec<u64>)>)>;

    fn seen(per_hub: &BTreeMap<String, ChangeBatch>) -> Seen {
        let mut out = Vec::new();
        for (hub, batch) in per_hub {
            assert_eq!(batch.stream, "1:slot");
            for change in &batch.changes {
                for payload in &change.payloads {
                    let to = payload.to.iter().map(|r| (r.socket.clone(), r.ids.clone())).collect();
                    out.push((hub.clone(), change.seq, payload.data["record"].clone(), to));
                }
            }
        }
        out
    }

    #[test]
    fn one_payload_per_hub_and_view_with_each_channels_ids() {
        let batch = [change("1", 0)];
        let (a1, a2) = (sub("hub:a", "s1", 11, "{}", None), sub("hub:a", "s1", 12, "{}", None));
        let b = sub("hub:b", "s2", 11, "{}", None);
        let narrow = sub("hub:a", "s3", 13, "{}", Some(&["body"]));
        let hits = [
            hit(0, &a1, Verdict::Visible),
            hit(0, &a2, Verdict::Visible),
            hit(0, &a1, Verdict::Visible), // the same binding matched twice: its id once
            hit(0, &b, Verdict::Visible),
            hit(0, &narrow, Verdict::Visible),
        ];
        let per_hub = without_rls(&batch, &hits);
        let full = json!({"id": 1, "body": "note 1"});
        assert_eq!(
            seen(&per_hub),
            vec![
                ("hub:a".into(), 0, full.clone(), vec![("s1".into(), vec![11, 12])]),
                (
                    "hub:a".into(),
                    0,
                    json!({"id": 1, "body": "note 1"}),
                    vec![("s3".into(), vec![13])]
                ),
                ("hub:b".into(), 0, full, vec![("s2".into(), vec![11])]),
            ]
        );
        assert_eq!(per_hub["hub:a"].changes[0].lsn, Lsn(100));
    }

    #[test]
    fn rls_hits_reach_only_the_contexts_that_see_the_row() {
        let batch = [change("1", 0), change("2", 1)];
        let (alice, bob) = (
            sub("hub:a", "alice", 1, r#"{"sub":"alice"}"#, None),
            sub("hub:a", "bob", 1, r#"{"sub":"bob"}"#, None),
        );
        let hits = [
            hit(0, &alice, Verdict::IfVisible),
            hit(0, &bob, Verdict::IfVisible),
            hit(1, &alice, Verdict::IfVisible),
            hit(1, &bob, Verdict::IfVisible),
        ];
        let context = |s: &Arc<Sub>| (7, s.role.clone(), s.claims.clone());
        let visible: Visible = HashMap::from([
            (context(&alice), HashSet::from([vec!["1".to_string()]])),
            (context(&bob), HashSet::from([vec!["2".to_string()]])),
        ]);
        let keys: Keys = HashMap::from([(0, Some(vec!["1".to_string()])), (1, Some(vec!["2".to_string()]))]);
        let per_hub = build_batches("1:slot", &batch, &hits, (&visible, &keys), &tables(true));
        let who: Vec<(u32, Vec<String>)> = seen(&per_hub)
            .into_iter()
            .map(|(_, seq, _, to)| (seq, to.into_iter().map(|(s, _)| s).collect()))
            .collect();
        assert_eq!(who, vec![(0, vec!["alice".to_string()]), (1, vec!["bob".to_string()])]);
    }

    #[test]
    fn error_rows_replace_the_record() {
        let batch = [change("1", 0)];
        let s = sub("hub:a", "s1", 5, "{}", None);
        let hits = [hit(0, &s, Verdict::Error(payload::UNAUTHORIZED))];
        let per_hub = without_rls(&batch, &hits);
        let data = &per_hub["hub:a"].changes[0].payloads[0].data;
        assert_eq!(data["errors"], json!([payload::UNAUTHORIZED]));
    }

    #[test]
    fn nothing_matched_builds_nothing() {
        let batch = [change("1", 0)];
        let per_hub = without_rls(&batch, &[]);
        assert!(per_hub.is_empty());
    }
}
