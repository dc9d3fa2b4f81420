//! RLS policies against Postgres's own answer (the `policy_pg` fuzz target): whatever the policy
//! text, what the replicator delivers of a batch of inserts must be, subscriber by subscriber,
//! exactly the rows Postgres lets that subscriber select. The analyser (`dispatch::policies`)
//! decides which subscribers a row reaches without asking Postgres when it calls a policy exact:
//! a wrong "exact" is an unauthorized delivery or a lost change, and this is where it shows.

use std::collections::BTreeSet;
use std::sync::Arc;

use sluice_shared::bindings::Action;
use sluice_shared::position::Lsn;

use crate::dispatch::{policies, Dispatcher};
use crate::source::change::{Datum, RelColumn, Relation, RowChange};
use crate::stats::Stats;
use crate::subscriptions::registry::{ChannelKey, Registry, Sub};

/// The oracle's schema: a table `docs` with RLS and the tables and helpers policies people write
/// refer to (Supabase's `auth` functions, a membership table with its own policy), and rows with
/// NULLs, empty arrays and values that differ only in case or type.
const SCHEMA: &str = r#"
do $$ begin
  if not exists (select from pg_roles where rolname = 'anon') then create role anon nologin; end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then create role authenticated nologin; end if;
end $$;
create schema if not exists auth;
create or replace function auth.jwt() returns jsonb language sql stable as $f$
  select nullif(current_setting('request.jwt.claims', true), '')::jsonb $f$;
create or replace function auth.uid() returns uuid language sql stable as $f$
  select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $f$;
create or replace function auth.role() returns text language sql stable as $f$
  select current_setting('request.jwt.claims', true)::jsonb ->> 'role' $f$;
grant usage on schema auth to anon, authenticated;
drop schema if exists sluice_fuzz_rls cascade;
create schema sluice_fuzz_rls;
create table sluice_fuzz_rls.docs (id int primary key, owner uuid, label text, team int, public bool, body text, readers uuid[]);
alter table sluice_fuzz_rls.docs enable row level security;
create table sluice_fuzz_rls.members (team int not null, user_id uuid not null, kind text not null);
alter table sluice_fuzz_rls.members enable row level security;
create policy own on sluice_fuzz_rls.members for select using (user_id = auth.uid() or team = 2);
grant usage on schema sluice_fuzz_rls to anon, authenticated;
grant select on all tables in schema sluice_fuzz_rls to anon, authenticated;
-- A policy that sleeps is cut short on every connection, the replicator's included.
do $$ begin execute format('alter database %I set statement_timeout = %L', current_database(), '2s'); end $$;
insert into sluice_fuzz_rls.docs values
  (1, '00000000-0000-4000-8000-000000000001', 'a', 1, true, 'one', '{00000000-0000-4000-8000-000000000002}'),
  (2, '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001', 2, false, 'two', '{}'),
  (3, null, 'A', 3, null, 'secret', null),
  (4, '00000000-0000-4000-8000-000000000003', '1', 0, false, '', '{00000000-0000-4000-8000-000000000001,NULL}'),
  (5, '00000000-0000-4000-8000-000000000001', null, null, true, 'b', '{00000000-0000-4000-8000-000000000003,00000000-0000-4000-8000-000000000001}'),
  (6, '00000000-0000-4000-8000-000000000004', 'anon', 2, true, 'a''b', '{}'),
  (7, '00000000-0000-4000-8000-000000000002', ' a', 1, false, 'authenticated', null),
  (8, '00000000-0000-4000-8000-000000000003', '2', 4, true, 'x', '{00000000-0000-4000-8000-000000000003}');
insert into sluice_fuzz_rls.members values
  (1, '00000000-0000-4000-8000-000000000001', 'lead'), (2, '00000000-0000-4000-8000-000000000002', 'staff'),
  (3, '00000000-0000-4000-8000-000000000001', 'staff'), (4, '00000000-0000-4000-8000-000000000003', 'lead'),
  (1, '00000000-0000-4000-8000-000000000003', 'staff');
"#;

/// The subscribers: (role, claims). Users with and without `sub`, a `sub` that is no uuid, team
/// claims as numbers and as text, lists of teams, and anon.
const SUBSCRIBERS: [(&str, &str); 10] = [
    ("authenticated", r#"{"role":"authenticated","sub":"00000000-0000-4000-8000-000000000001","team":1}"#),
    ("authenticated", r#"{"role":"authenticated","sub":"00000000-0000-4000-8000-000000000002","team":"2","teams":[1,2]}"#),
    ("authenticated", r#"{"role":"authenticated","sub":"00000000-0000-4000-8000-000000000003","teams":[],"app_metadata":{"teams":[4]}}"#),
    ("authenticated", r#"{"role":"authenticated","sub":"00000000-0000-4000-8000-000000000004","team":0}"#),
    ("authenticated", r#"{"role":"authenticated","team":3}"#),
    ("authenticated", r#"{"role":"authenticated","sub":"","team":null}"#),
    ("authenticated", r#"{"role":"authenticated","sub":"a","label":"A"}"#),
    ("anon", r#"{"role":"anon"}"#),
    ("anon", r#"{"role":"anon","sub":"00000000-0000-4000-8000-000000000001","team":1}"#),
    ("authenticated", r#"{"role":"authenticated","sub":"00000000-0000-4000-8000-000000000001","team":1,"teams":[3]}"#),
];

/// The policies an input sets on `docs`, by line: permissive for `authenticated`, permissive for
/// everyone, restrictive for everyone.
const POLICIES: [&str; 3] = ["as permissive for select to authenticated", "as permissive for select", "as restrictive for select"];

/// Deliveries against Postgres for RLS policies written by the fuzzer (see the module).
pub struct PolicyOracle {
    runtime: tokio::runtime::Runtime,
    db: Arc<crate::db::Db>,
    dispatcher: Dispatcher,
    /// The rows of `docs`, as inserts pgoutput would decode.
    batch: Vec<RowChange>,
}

impl PolicyOracle {
    /// Connects to the scratch database at `url`, applies sluice's migrations and (re)creates
    /// schema `sluice_fuzz_rls` with its rows.
    pub fn connect(url: &str) -> Result<PolicyOracle, String> {
        let (runtime, db) = super::scratch(url)?;
        let db = Arc::new(db);
        let batch = runtime.block_on(async {
            let client = db.dedicated().await.map_err(|e| e.to_string())?;
            client.batch_execute(SCHEMA).await.map_err(|e| e.to_string())?;
            // The pooled connection the checks use may be older than the database's setting.
            let pooled = db.client().await.map_err(|e| e.to_string())?;
            pooled.batch_execute("set statement_timeout = '2s'").await.map_err(|e| e.to_string())?;
            let columns = client
                .query(
                    "select attname::text, atttypid, attname = 'id' from pg_attribute
                     where attrelid = 'sluice_fuzz_rls.docs'::regclass and attnum > 0 and not attisdropped order by attnum",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            let relid: u32 = client
                .query_one("select 'sluice_fuzz_rls.docs'::regclass::oid", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            let relation = Arc::new(Relation {
                relid,
                schema: "sluice_fuzz_rls".into(),
                table: "docs".into(),
                columns: columns
                    .iter()
                    .map(|c| RelColumn { name: c.get(0), type_oid: c.get(1), identity: c.get(2) })
                    .collect(),
            });
            // Each column's text output, as pgoutput sends it.
            let rows = client
                .query(
                    "select id::text, owner::text, label, team::text, public::text, body, readers::text
                     from sluice_fuzz_rls.docs order by id",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            let batch: Vec<RowChange> = rows
                .iter()
                .enumerate()
                .map(|(seq, row)| RowChange {
                    lsn: Lsn(1),
                    seq: seq as u32,
                    commit_micros: 0,
                    relation: relation.clone(),
                    action: Action::Insert,
                    new: Some(
                        (0..relation.columns.len())
                            .map(|i| row.get::<_, Option<String>>(i).map_or(Datum::Null, Datum::Text))
                            .collect(),
                    ),
                    old: None,
                    old_is_key: false,
                })
                .collect();
            Ok::<_, String>(batch)
        })?;
        let registry = Arc::new(Registry::default());
        let relid = batch.first().map_or(0, |c: &RowChange| c.relation.relid);
        for (i, (role, claims)) in SUBSCRIBERS.iter().enumerate() {
            let sub = Sub {
                channel: ChannelKey { hub: "hub:fuzz".into(), socket: format!("s{i}"), topic: "realtime:fuzz".into() },
                binding_id: 1,
                action: Action::All,
                conditions: Vec::new(),
                select: None,
                role: (*role).into(),
                claims: (*claims).into(),
            };
            registry.add(relid, sub);
        }
        let dispatcher = Dispatcher::new(registry, db.clone(), Arc::new(Stats::default()), "fuzz".into());
        Ok(PolicyOracle { runtime, db, dispatcher, batch })
    }

    /// Sets the policies on `docs` (one per line of `text`, up to three: see [`POLICIES`]) and
    /// checks the replicator's deliveries of every row against Postgres. Returns quietly when
    /// Postgres refuses a policy, or when the analyser reads none of them (then every row is
    /// checked by Postgres itself, which is not what this oracle is for). Panics on a difference.
    pub fn check(&mut self, text: &str) {
        let lines: Vec<&str> = text.lines().take(POLICIES.len()).collect();
        if lines.is_empty() || lines.iter().any(|l| l.contains(';')) {
            return;
        }
        let db = self.db.clone();
        self.runtime.block_on(async {
            let Ok(client) = db.client().await else { return };
            // The policies are the fuzzer's SQL on a scratch database, evaluated only as the
            // subscribers' roles (unprivileged), one statement each (no `;`), bounded in time (the
            // database's `statement_timeout`).
            let _ = client
                .batch_execute("do $$ declare p record; begin for p in select polname from pg_policy where polrelid = 'sluice_fuzz_rls.docs'::regclass loop execute format('drop policy %I on sluice_fuzz_rls.docs', p.polname); end loop; end $$")
                .await;
            for (i, (expression, kind)) in lines.iter().zip(POLICIES).enumerate() {
                let sql = format!("create policy fuzz_{i} on sluice_fuzz_rls.docs {kind} using ({expression})");
                if client.execute(sql.as_str(), &[]).await.is_err() {
                    return;
                }
            }
            let Ok(quals) = client
                .query(
                    "select pg_get_expr(polqual, polrelid) from pg_policy
                     where polrelid = 'sluice_fuzz_rls.docs'::regclass and polpermissive and polqual is not null",
                    &[],
                )
                .await
            else {
                return;
            };
            let quals: Vec<String> = quals.iter().map(|q| q.get(0)).collect();
            if !quals.iter().any(|q| policies::links(q, "docs").is_some()) {
                return;
            }
            let delivered = match self.dispatcher.dispatch(&self.batch).await {
                Ok(batches) => delivered(&batches),
                // The replicator would retry the batch; so does the next input.
                Err(e) if e.code().is_some_and(|c| *c == tokio_postgres::error::SqlState::QUERY_CANCELED) => return,
                Err(e) => panic!("dispatch failed for policies {lines:?}: {e}"),
            };
            let Some((allowed, failed)) = allowed(&client, &self.batch).await else { return };
            // Where the policy fails for a row, Postgres's answer depends on its plan (an OR may
            // or may not evaluate the failing side first): those pairs are not compared.
            let delivered: BTreeSet<_> = delivered.difference(&failed).cloned().collect();
            assert_eq!(
                delivered, allowed,
                "policies {lines:?} (read as {quals:?}): sluice delivered the left (socket, id) pairs, Postgres allows the right"
            );
        });
    }
}

/// The (socket, row id) pairs of the hubs' batches.
fn delivered(batches: &std::collections::BTreeMap<String, sluice_shared::internal::ChangeBatch>) -> Pairs {
    let mut out = BTreeSet::new();
    for batch in batches.values() {
        for payload in batch.changes.iter().flat_map(|c| &c.payloads) {
            let id = payload.data["record"]["id"].as_i64().unwrap_or(-1);
            for to in &payload.to {
                out.insert((to.socket.clone(), id));
            }
        }
    }
    out
}

/// (socket, row id) pairs.
type Pairs = BTreeSet<(String, i64)>;

/// What Postgres lets each subscriber select of the rows, asked row by row as that subscriber, and
/// the pairs where the policy failed. `None`: Postgres could not answer (a timeout).
async fn allowed(client: &tokio_postgres::Client, batch: &[RowChange]) -> Option<(Pairs, Pairs)> {
    let mut out = BTreeSet::new();
    let mut failed = BTreeSet::new();
    for (i, (role, claims)) in SUBSCRIBERS.iter().enumerate() {
        for change in batch {
            let Some(Datum::Text(id)) = change.new.as_ref().and_then(|row| row.first()) else { continue };
            let id: i32 = id.parse().ok()?;
            client.batch_execute("begin").await.ok()?;
            let _ = client
                .execute("select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)", &[role, claims])
                .await;
            let seen = client
                .query_one("select exists (select 1 from sluice_fuzz_rls.docs where id = $1)", &[&id])
                .await;
            client.batch_execute("rollback").await.ok()?;
            match seen {
                Ok(row) if row.get::<_, bool>(0) => {
                    out.insert((format!("s{i}"), i64::from(id)));
                }
                Ok(_) => {}
                Err(e) if e.code().is_some_and(|c| *c == tokio_postgres::error::SqlState::QUERY_CANCELED) => return None,
                Err(_) => {
                    failed.insert((format!("s{i}"), i64::from(id)));
                }
            }
        }
    }
    Some((out, failed))
}
