//! The per-hub batches: for each change, one payload per distinct view (role and `select`), each
//! with the channels that see it and the ids of their matched bindings. Pure given the matches,
//! the RLS answers and the cached catalog facts.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_shared::internal::{Change, ChangeBatch, ChangePayload, Recipient};

use super::payload::{self, View};
use super::tables::Tables;
use super::{Hit, Keys, Verdict, Visible};
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
                changes: Vec::new(),
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
