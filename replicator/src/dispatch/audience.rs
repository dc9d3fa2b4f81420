//! Who a change could reach. Per table of a batch, its subscriptions grouped by role, and for each
//! role a [`Rule`] read from the table's policies: every row visible (RLS off, or bypassed),
//! rows tied to the subscriber by [`Link`]s (`user_id = auth.uid()`, membership through another
//! table, conditions of the claims alone), or not analysed. For links, each subscriber's claim
//! values are computed by Postgres once (as that subscriber) and kept in an index from value to
//! subscriptions, so a change visits only those whose value it carries: a row only its owner may
//! see costs about one lookup, however many users are subscribed.
//!
//! What the index finds is a superset of what Postgres allows, and is confirmed by the batched
//! RLS query unless the rule is exact: no restrictive policy, and every permissive one a column
//! or claims link (then "the value equals the column" is the policy). A subscriber whose value
//! could not be computed is a candidate for every row, confirmed. Membership is read once per
//! batch, in the same snapshot as the confirming queries, so a change's audience is the
//! membership table as it is then.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::FutureExt;
use sluice_shared::bindings::Action;
use sluice_shared::filter::Cell;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::matching::Verdict;
use super::helpers;
use super::policies::{self, Field, Link};
use super::tables::{TableInfo, Tables};
use crate::source::change::{Relation, RowChange};
use crate::stats::{RlsPath, Stats};
use crate::subscriptions::registry::{Registry, Sub};

/// What a role may see of a table's rows, as its policies say (read from the catalog each batch).
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// Every row, without asking: RLS is off, or the role bypasses it or owns the table.
    Everything,
    /// The rows the links tie to the subscriber (none: no permissive policy applies). `exact`:
    /// the links are the whole policy, so what they find needs no confirmation.
    Links { links: Vec<Resolved>, exact: bool },
    /// Policies sluice does not analyse: every subscriber is a candidate, confirmed by Postgres.
    Unknown,
}

/// A [`Link`] resolved against the catalog: columns by index, types to cast values to.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved {
    Column {
        column: usize,
        expression: String,
        ty: String,
    },
    /// `expression = ANY (column)`: the row's keys are its array's elements.
    Elements {
        column: usize,
        expression: String,
        /// The element type (the claim value is cast to it).
        ty: String,
    },
    /// Without a column: every row, for the members the table has (a condition of the
    /// subscriber alone).
    /// `column = ANY (<claims array>)`: the subscriber's value is a list (`ty` ends in `[]`).
    AmongClaims {
        column: usize,
        expression: String,
        /// The column's type as an array type (`bigint[]`).
        ty: String,
    },
    Membership {
        column: Option<usize>,
        expression: String,
        /// The member column's type (the claim value is cast to it).
        ty: String,
        read: Arc<MembershipRead>,
    },
    Claims {
        expression: String,
    },
}

impl Resolved {
    /// The claims expression and the type its value is compared as.
    fn value_of(&self) -> (&str, &str) {
        match self {
            Resolved::Column { expression, ty, .. }
            | Resolved::AmongClaims { expression, ty, .. }
            | Resolved::Elements { expression, ty, .. }
            | Resolved::Membership { expression, ty, .. } => (expression, ty),
            Resolved::Claims { expression } => (expression, "boolean"),
        }
    }
}

/// How to read a membership table: `select key, member from table where key = any($1) and
/// <filters>` (keyless: `select '', member … where member = any($1)`, `$1` the subscribers'
/// values), as a role that sees all of its rows (a superset of what any subscriber's policy sees
/// there). `$2` holds the filters' values.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MembershipRead {
    pub select: String,
    pub reader: String,
    pub filters: Vec<String>,
}

/// The subscriptions of one table, and per role who its rows could reach.
pub struct Audience {
    /// The registry's snapshot it was built from.
    subs: Arc<Vec<Arc<Sub>>>,
    rls: bool,
    roles: Vec<RoleAudience>,
}

struct RoleAudience {
    role: Arc<str>,
    subs: Vec<Arc<Sub>>,
    rule: Rule,
    index: Index,
}

/// For a [`Rule::Links`]: per link, value → subscriptions.
#[derive(Default)]
struct Index {
    by_value: Vec<HashMap<String, Vec<Arc<Sub>>>>,
    /// A claims condition is true for them: every row.
    always: Vec<Arc<Sub>>,
    /// A value could not be computed: every row, confirmed.
    unknown: Vec<Arc<Sub>>,
}

/// Per membership table read in a batch: key → member values (`None`: the read failed).
pub type Memberships = HashMap<Arc<MembershipRead>, Option<HashMap<String, Vec<String>>>>;

impl Audience {
    /// Each subscription `change` could reach, with what its subscriber may see of it:
    /// [`Verdict::Visible`] or [`Verdict::IfVisible`] (Postgres confirms).
    /// `each` is also told how the pair was decided (`None`: no RLS check, or a delete).
    pub fn reach(&self, change: &RowChange, members: &Memberships, mut each: impl FnMut(&Arc<Sub>, Verdict, Option<RlsPath>)) {
        if !self.rls || change.action == Action::Delete {
            // Deletes are not RLS-checked (upstream).
            for sub in self.subs.iter() {
                each(sub, Verdict::Visible, None);
            }
            return;
        }
        for role in &self.roles {
            let links = match &role.rule {
                Rule::Everything => {
                    role.subs.iter().for_each(|s| each(s, Verdict::Visible, None));
                    continue;
                }
                Rule::Unknown => {
                    role.subs.iter().for_each(|s| each(s, Verdict::IfVisible, Some(RlsPath::Unindexed)));
                    continue;
                }
                Rule::Links { links, exact } => (links, *exact),
            };
            let (links, exact) = links;
            let found = match exact {
                true => (Verdict::Visible, RlsPath::Indexed),
                false => (Verdict::IfVisible, RlsPath::Confirmed),
            };
            let index = &role.index;
            // Keys of the row for each link; `None`: the row cannot be placed, all are candidates.
            let mut values: Vec<(usize, Vec<&str>)> = Vec::new();
            let mut placed = true;
            for (i, link) in links.iter().enumerate() {
                match link {
                    Resolved::Claims { .. } => {}
                    Resolved::Column { column, .. } | Resolved::AmongClaims { column, .. } => match change.cell(*column) {
                        Cell::Text(v) => values.push((i, vec![v])),
                        Cell::Null => {}
                        Cell::Absent => placed = false,
                    },
                    Resolved::Elements { column, .. } => match change.cell(*column) {
                        Cell::Text(v) => match array_elements(v) {
                            Some(elements) => values.push((i, elements)),
                            None => placed = false,
                        },
                        Cell::Null => {}
                        Cell::Absent => placed = false,
                    },
                    Resolved::Membership { column, read, .. } => {
                        let cell = column.map_or(Cell::Text(""), |c| change.cell(c));
                        match (cell, members.get(read).and_then(Option::as_ref)) {
                            (Cell::Text(v), Some(members)) => {
                                let of = members.get(v).map(|m| m.iter().map(String::as_str).collect());
                                values.push((i, of.unwrap_or_default()));
                            }
                            (Cell::Null, _) => {}
                            _ => placed = false,
                        }
                    }
                }
            }
            if !placed {
                role.subs.iter().for_each(|s| each(s, Verdict::IfVisible, Some(RlsPath::Unindexed)));
                continue;
            }
            // A subscriber reached through two links is one candidate.
            let mut seen: HashSet<*const Sub> = HashSet::new();
            let mut once = |sub: &Arc<Sub>, (verdict, path)| {
                if links.len() == 1 || seen.insert(Arc::as_ptr(sub)) {
                    each(sub, verdict, Some(path));
                }
            };
            for (i, keys) in values {
                for key in keys {
                    for sub in index.by_value[i].get(key).into_iter().flatten() {
                        once(sub, found);
                    }
                }
            }
            index.always.iter().for_each(|s| once(s, found));
            index.unknown.iter().for_each(|s| once(s, (Verdict::IfVisible, RlsPath::Confirmed)));
        }
    }
}

/// What is kept across batches: the claim values, and each table's last audience.
#[derive(Default)]
pub struct Audiences {
    values: ClaimValues,
    built: HashMap<u32, Arc<Audience>>,
    /// Tables and roles whose batched check has been explained in the log (once each).
    explained: HashSet<(u32, Arc<str>)>,
}

impl Audiences {
    /// The audience of each table `batch` touches that has subscriptions, with the catalog facts
    /// the verdicts need (table info, selectable columns per role) cached in `tables`.
    pub async fn prepare(
        &mut self,
        conn: &mut Client,
        tables: &mut Tables,
        registry: &Registry,
        batch: &[RowChange],
        stats: &Stats,
    ) -> Result<HashMap<u32, Arc<Audience>>, tokio_postgres::Error> {
        let mut out = HashMap::new();
        for change in batch {
            let relation = &change.relation;
            if out.contains_key(&relation.relid) {
                continue;
            }
            let Some(subs) = registry.for_table(relation.relid) else {
                continue;
            };
            let info = tables.info(conn, relation).await?;
            let previous = self.built.get(&relation.relid).filter(|a| Arc::ptr_eq(&a.subs, &subs));
            let role_names: Vec<Arc<str>> = match previous {
                Some(previous) => previous.roles.iter().map(|r| r.role.clone()).collect(),
                None => {
                    let mut names: Vec<Arc<str>> = subs.iter().map(|s| s.role.clone()).collect();
                    names.sort();
                    names.dedup();
                    names
                }
            };
            let mut rules = Vec::with_capacity(role_names.len());
            for role in &role_names {
                tables.selectable(conn, relation, role).await?;
                let mut why = None;
                rules.push(rule(conn, relation, &info, role, &mut why).await?);
                if let Some(why) = why {
                    if self.explained.insert((relation.relid, role.clone())) {
                        info!(table = relation.table, role = &**role, "RLS: every subscriber of this table is checked by Postgres; {why}");
                    }
                }
            }
            let unchanged = previous.is_some_and(|p| p.roles.iter().map(|r| &r.rule).eq(rules.iter()));
            let audience = match previous {
                Some(previous) if unchanged => previous.clone(),
                _ => {
                    let audience = self.build(conn, &subs, info.rls, role_names, rules, stats).await?;
                    self.built.insert(relation.relid, audience.clone());
                    audience
                }
            };
            out.insert(relation.relid, audience);
        }
        Ok(out)
    }

    /// Computes the claim values the rules need, then indexes the subscriptions by them.
    async fn build(
        &mut self,
        conn: &mut Client,
        subs: &Arc<Vec<Arc<Sub>>>,
        rls: bool,
        role_names: Vec<Arc<str>>,
        rules: Vec<Rule>,
        stats: &Stats,
    ) -> Result<Arc<Audience>, tokio_postgres::Error> {
        let mut roles: Vec<RoleAudience> = role_names
            .into_iter()
            .zip(rules)
            .map(|(role, rule)| RoleAudience {
                subs: subs.iter().filter(|s| s.role == role).cloned().collect(),
                role,
                rule,
                index: Index::default(),
            })
            .collect();
        let mut wanted: Wanted = Vec::new();
        let mut asked: HashSet<(Arc<str>, Arc<str>)> = HashSet::new();
        for role in &roles {
            let Rule::Links { links, .. } = &role.rule else {
                continue;
            };
            let expressions: Vec<(String, String)> = links
                .iter()
                .map(|l| l.value_of())
                .map(|(e, ty)| (e.to_string(), ty.to_string()))
                .collect();
            for sub in &role.subs {
                if asked.insert((sub.role.clone(), sub.claims.clone())) {
                    wanted.push((sub.role.clone(), sub.claims.clone(), expressions.clone()));
                }
            }
        }
        if !wanted.is_empty() {
            Stats::count(&stats.rls_queries, self.values.evaluate(conn, wanted).await?);
        }
        for role in &mut roles {
            if let Rule::Links { links, .. } = &role.rule {
                role.index = Index::build(&role.subs, links, &self.values);
            }
        }
        Ok(Arc::new(Audience {
            subs: subs.clone(),
            rls,
            roles,
        }))
    }
}

impl Index {
    fn build(subs: &[Arc<Sub>], links: &[Resolved], values: &ClaimValues) -> Index {
        let mut index = Index {
            by_value: vec![HashMap::new(); links.len()],
            ..Index::default()
        };
        for sub in subs {
            let known: Option<Vec<&Option<String>>> = links
                .iter()
                .map(|l| {
                    let (expression, ty) = l.value_of();
                    values.get(&sub.role, &sub.claims, expression, ty)
                })
                .collect();
            let Some(known) = known else {
                index.unknown.push(sub.clone());
                continue;
            };
            for (i, (link, value)) in links.iter().zip(known).enumerate() {
                match (link, value) {
                    (Resolved::Claims { .. }, Some(v)) if v == "true" => index.always.push(sub.clone()),
                    (Resolved::Claims { .. }, _) | (_, None) => {}
                    // A JSON array of the subscriber's values (see `select_of`).
                    (Resolved::AmongClaims { .. }, Some(list)) => {
                        for v in serde_json::from_str::<Vec<Option<String>>>(list).unwrap_or_default().into_iter().flatten() {
                            index.by_value[i].entry(v).or_default().push(sub.clone());
                        }
                    }
                    (_, Some(v)) => index.by_value[i].entry(v.clone()).or_default().push(sub.clone()),
                }
            }
        }
        index
    }
}

/// What `role` may see of the table's rows, from the catalog: whether it bypasses RLS, and the
/// SELECT policies that apply to it (read fresh each batch: a changed policy counts from the next).
/// `why` gets the reason when a policy sends the table to the batched check.
async fn rule(
    conn: &Client,
    relation: &Relation,
    info: &TableInfo,
    role: &str,
    why: &mut Option<String>,
) -> Result<Rule, tokio_postgres::Error> {
    if !info.rls {
        return Ok(Rule::Everything);
    }
    let bypass = conn
        .query_opt(
            "select r.rolbypassrls or (pg_has_role($2::name, c.relowner, 'USAGE') and not c.relforcerowsecurity)
             from pg_roles r, pg_class c where r.rolname = $2 and c.oid = $1",
            &[&relation.relid, &role],
        )
        .await?;
    match bypass.map(|row| row.get::<_, bool>(0)) {
        None => return Ok(Rule::Unknown), // the role is gone: Postgres will say
        Some(true) => return Ok(Rule::Everything),
        Some(false) => {}
    }
    let policies = conn
        .query(
            "select p.oid, p.polpermissive, pg_get_expr(p.polqual, p.polrelid), p.polname::text from pg_policy p
             where p.polrelid = $1 and p.polcmd in ('r', '*')
               and exists (select from unnest(p.polroles) r where r = 0 or pg_has_role($2::name, r, 'USAGE'))",
            &[&relation.relid, &role],
        )
        .await?;
    let mut links = Vec::new();
    let mut exact = true;
    for policy in policies {
        if !policy.get::<_, bool>(1) {
            exact = false; // restrictive: the links find a superset, Postgres decides
            continue;
        }
        let qual = policy.get::<_, Option<String>>(2).unwrap_or_else(|| "true".into());
        let name: String = policy.get(3);
        let written = qual.clone();
        let qual = match helpers::inlined(conn, &qual, &relation.table).await? {
            Ok(inlined) => inlined,
            Err(reason) => {
                *why = Some(format!("policy {name}: {reason}"));
                return Ok(Rule::Unknown);
            }
        };
        let Some(parts) = policies::links(&qual, &relation.table) else {
            *why = Some(format!("policy {name}: {}", policies::advice(&qual)));
            return Ok(Rule::Unknown);
        };
        if let Some(refusal) = policies::refusal(&parts) {
            *why = Some(format!("policy {name}: {refusal}"));
            return Ok(Rule::Unknown);
        }
        let not_text = |column: &str| {
            Some(format!(
                "policy {name}: {column} is not compared by its text (sluice indexes integers, text, varchar and uuid with deterministic collations)"
            ))
        };
        let text_equal = |i: usize| policies::text_equal(&info.typnames[i]) && info.deterministic[i];
        // An OR's parts each tie rows to subscribers: the policy's audience is their union.
        for link in parts {
            let resolved = match link {
                Link::Claims { expression } => Resolved::Claims { expression },
                Link::Column { column, expression, cast } => match relation.column(&column) {
                    Some(i) if text_equal(i) => Resolved::Column {
                        column: i,
                        expression,
                        ty: match cast.as_deref() {
                            None => info.column_type(i).to_string(),
                            // A text-equal type cast to text is its output text, as pgoutput
                            // sends it: the claim is compared as text.
                            Some(_) => "text".to_string(), // refusal() took the others
                        },
                    },
                    _ => {
                        *why = not_text(&column);
                        return Ok(Rule::Unknown);
                    }
                },
                Link::AmongClaims { column, expression } => match relation.column(&column) {
                    Some(i) if text_equal(i) => Resolved::AmongClaims {
                        column: i,
                        expression,
                        ty: format!("{}[]", info.column_type(i)),
                    },
                    _ => {
                        *why = not_text(&column);
                        return Ok(Rule::Unknown);
                    }
                },
                Link::AnyElement { column, expression } => match relation.column(&column) {
                    Some(i)
                        if info.deterministic[i]
                            && info.typnames[i]
                                .strip_prefix('_')
                                .is_some_and(|element| ARRAY_ELEMENT_TYPES.contains(&element)) =>
                    {
                        Resolved::Elements {
                            column: i,
                            expression,
                            ty: info.column_type(i).trim_end_matches("[]").to_string(),
                        }
                    }
                    _ => {
                        *why = not_text(&column);
                        return Ok(Rule::Unknown);
                    }
                },
                Link::Membership {
                    column,
                    tables,
                    key,
                    member,
                    expression,
                    filters,
                    joins,
                } => {
                    let column = match &column {
                        None => None,
                        Some(column) => match relation.column(column).filter(|&i| text_equal(i)) {
                            Some(i) => Some(i),
                            None => {
                                *why = not_text(column);
                                return Ok(Rule::Unknown);
                            }
                        },
                    };
                    let Some((read, ty, open)) = membership_read(conn, &tables, key.as_ref(), &member, &filters, &joins, role).await? else {
                        let table = tables.join(" and ");
                        *why = Some(format!(
                            "policy {name}: no role sluice may become reads every row of {table} (grant SELECT on it to service_role, which bypasses RLS), or a column it compares there is not compared by its text"
                        ));
                        return Ok(Rule::Unknown);
                    };
                    // The read finds exactly who Postgres would let see the row when the
                    // subscriber reads the tables as they are (no RLS of their own, SELECT
                    // granted) and the policy names them itself: a helper function may run as
                    // its owner, or be one the subscriber may not execute.
                    exact &= open && qual == written;
                    Resolved::Membership {
                        column,
                        expression,
                        ty,
                        read: Arc::new(read),
                    }
                }
            };
            links.push(resolved);
        }
    }
    Ok(Rule::Links { links, exact })
}

/// How to read the membership `tables` (as the policy names them), the member column's type, and
/// whether `role` reads them whole itself (SELECT granted, no RLS on any: then what the read finds
/// is what the policy's subquery finds for the subscriber). `None` when they cannot be read whole: no such table, a compared column is missing or its `=`
/// is not text equality, or no role the replicator may use sees all of their rows (then the
/// policy is not narrowed).
async fn membership_read(
    conn: &Client,
    tables: &[String],
    key: Option<&Field>,
    member: &Field,
    filters: &[(Field, String)],
    joins: &[(Field, Field)],
    role: &str,
) -> Result<Option<(MembershipRead, String, bool)>, tokio_postgres::Error> {
    let found = conn
        .query(
            "select c.oid, format('%I.%I', n.nspname, c.relname),
                    not c.relrowsecurity and has_table_privilege($2::name, c.oid, 'SELECT')
             from unnest($1::text[]) with ordinality as p(printed, place)
             join pg_class c on c.oid = to_regclass(p.printed) join pg_namespace n on n.oid = c.relnamespace
             order by p.place",
            &[&tables, &role],
        )
        .await?;
    if found.len() != tables.len() {
        return Ok(None);
    }
    let oids: Vec<u32> = found.iter().map(|row| row.get(0)).collect();
    let reader = conn
        .query_opt(
            "select r.rolname::text from pg_roles r
             where pg_has_role(current_user, r.oid, 'MEMBER')
               and not exists (select from pg_class c where c.oid = any($1::oid[]) and not (
                   has_table_privilege(r.oid, c.oid, 'SELECT')
                   and (not c.relrowsecurity or r.rolbypassrls
                        or (pg_has_role(r.oid, c.relowner, 'USAGE') and not c.relforcerowsecurity))))
             order by r.rolname <> current_user, r.rolname <> 'service_role', r.rolname limit 1",
            &[&oids],
        )
        .await?;
    let Some(reader) = reader.map(|row| row.get::<_, String>(0)) else {
        return Ok(None);
    };
    let names: Vec<&str> = filters
        .iter()
        .map(|(f, _)| f)
        .chain(joins.iter().flat_map(|(a, b)| [a, b]))
        .chain([member])
        .chain(key)
        .map(|f| f.column.as_str())
        .collect();
    let columns = conn
        .query(
            "select a.attrelid, a.attname::text, quote_ident(a.attname), t.typname::text, format_type(a.atttypid, a.atttypmod),
                    coalesce(co.collisdeterministic, true), t.typtype = 'e' or t.typname = 'bool'
             from pg_attribute a join pg_type t on t.oid = a.atttypid
             left join pg_collation co on co.oid = a.attcollation
             where a.attrelid = any($1::oid[]) and a.attnum > 0 and not a.attisdropped and a.attname = any($2::text[])",
            &[&oids, &names],
        )
        .await?;
    // (`s<table>.<quoted name>`, type) of a column, if `compared` says it may be compared:
    // (text-equal type, enum or boolean) of a column whose collation is deterministic.
    let column = |field: &Field, compared: &dyn Fn(&str, bool) -> bool| {
        columns
            .iter()
            .find(|c| c.get::<_, u32>(0) == oids[field.table] && c.get::<_, String>(1) == field.column)
            .filter(|c| c.get::<_, bool>(5) && compared(c.get(3), c.get(6)))
            .map(|c| (format!("s{}.{}", field.table, c.get::<_, String>(2)), c.get::<_, String>(4)))
    };
    let by_text = |typname: &str, _: bool| policies::text_equal(typname);
    let Some((member, member_type)) = column(member, &by_text) else {
        return Ok(None);
    };
    // The tables under aliases of ours (s0, s1), joined where the policy joins them (Postgres
    // compares the joined columns itself, whatever their type).
    let names: Vec<String> = found.iter().map(|row| row.get(1)).collect();
    let mut from = format!("{} s0", names[0]);
    if let Some(second) = names.get(1) {
        from.push_str(&format!(" join {second} s1 on true"));
    }
    for (a, b) in joins {
        let any = |_: &str, _: bool| true;
        let (Some((a, _)), Some((b, _))) = (column(a, &any), column(b, &any)) else {
            return Ok(None);
        };
        from.push_str(&format!(" and {a} = {b}"));
    }
    let mut conditions = String::new();
    for (n, (field, _)) in filters.iter().enumerate() {
        let Some((name, ty)) = column(field, &|typname, labels| policies::text_equal(typname) || labels) else {
            return Ok(None);
        };
        // The literal's text read as the column's type: the policy's `m.column = 'value'`.
        conditions.push_str(&format!(" and {name} = ($2::text[])[{}]::{ty}", n + 1));
    }
    // Only catalog-quoted names are part of the text; keys, members and values are parameters.
    let select = match key {
        Some(key) => {
            let Some((key, key_type)) = column(key, &by_text) else {
                return Ok(None);
            };
            format!("select {key}::text, {member}::text from {from} where {key} = any($1::text[]::{key_type}[]){conditions}")
        }
        None => format!(
            "select ''::text, {member}::text from {from} where {member} = any($1::text[]::{member_type}[]){conditions}"
        ),
    };
    let filters = filters.iter().map(|(_, value)| value.clone()).collect();
    let open = found.iter().all(|row| row.get::<_, bool>(2));
    Ok(Some((MembershipRead { select, reader, filters }, member_type, open)))
}

/// Element types of arrays whose text form is a plain comma-separated list (never quoted) and
/// whose `=` is equality of that text.
const ARRAY_ELEMENT_TYPES: [&str; 5] = ["uuid", "int2", "int4", "int8", "oid"];

/// The elements of a one-dimensional array of [`ARRAY_ELEMENT_TYPES`] as pgoutput sends it
/// (`{a,b,NULL}`), NULLs left out (they equal nothing); `None` for any other shape.
fn array_elements(text: &str) -> Option<Vec<&str>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(vec![]);
    }
    let elements: Vec<&str> = inner.split(',').collect();
    if elements.iter().any(|e| e.is_empty() || e.contains(['{', '}', '"', '\\', ' '])) {
        return None;
    }
    Some(elements.into_iter().filter(|e| !e.eq_ignore_ascii_case("null")).collect())
}

/// Whether any of the audiences has a membership link (then the batch reads memberships).
pub fn reads_memberships(audiences: &HashMap<u32, Arc<Audience>>) -> bool {
    audiences.values().flat_map(|a| &a.roles).any(|role| match &role.rule {
        Rule::Links { links, .. } => links.iter().any(|l| matches!(l, Resolved::Membership { .. })),
        _ => false,
    })
}

/// Reads, inside the batch's transaction, the membership of every key the batch's changes carry
/// for each membership link. A failed read leaves its links unplaced (every subscriber, confirmed).
pub async fn memberships(
    tx: &Client,
    audiences: &HashMap<u32, Arc<Audience>>,
    batch: &[RowChange],
    stats: &Stats,
) -> Result<Memberships, tokio_postgres::Error> {
    // Per read, the keys the batch's rows carry (keyless: the subscribers' values).
    let mut keys: HashMap<Arc<MembershipRead>, HashSet<&str>> = HashMap::new();
    let mut subscribers_added: HashSet<(usize, usize)> = HashSet::new(); // (read, role) by address
    for change in batch.iter().filter(|c| c.action != Action::Delete) {
        let Some(audience) = audiences.get(&change.relation.relid) else {
            continue;
        };
        for role in &audience.roles {
            let Rule::Links { links, .. } = &role.rule else {
                continue;
            };
            for (i, link) in links.iter().enumerate() {
                let Resolved::Membership { column, read, .. } = link else {
                    continue;
                };
                let wanted = keys.entry(read.clone()).or_default();
                match column {
                    Some(column) => {
                        if let Cell::Text(v) = change.cell(*column) {
                            wanted.insert(v);
                        }
                    }
                    None => {
                        if subscribers_added.insert((Arc::as_ptr(read) as usize, role as *const RoleAudience as usize)) {
                            wanted.extend(role.index.by_value[i].keys().map(String::as_str));
                        }
                    }
                }
            }
        }
    }
    let mut out = Memberships::new();
    for (read, wanted) in keys {
        let wanted: Vec<&str> = wanted.into_iter().collect();
        Stats::count(&stats.rls_queries, 1);
        tx.execute("savepoint membership", &[]).await?;
        tx.execute("select set_config('role', $1, true)", &[&read.reader])
            .await?;
        let answer = if read.filters.is_empty() {
            tx.query(&read.select, &[&wanted]).await
        } else {
            tx.query(&read.select, &[&wanted, &read.filters]).await
        };
        match answer {
            Ok(rows) => {
                tx.execute("release savepoint membership", &[]).await?;
                let mut of: HashMap<String, Vec<String>> = HashMap::new();
                for row in rows {
                    if let (Some(key), Some(member)) = (row.get(0), row.get(1)) {
                        of.entry(key).or_default().push(member);
                    }
                }
                out.insert(read, Some(of));
            }
            Err(e) if e.as_db_error().is_some() => {
                warn!("RLS narrowing: reading membership failed ({e}); its rows are checked for every subscriber");
                tx.execute("rollback to savepoint membership", &[]).await?;
                out.insert(read, None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Per subscriber (role, claims), the expressions to evaluate with the type each is cast to.
type Wanted = Vec<(Arc<str>, Arc<str>, Vec<(String, String)>)>;

/// Each subscriber's values of the claims expressions, by role and claims (the expressions read
/// nothing else, so subscribers with the same role and claims share them).
#[derive(Default)]
struct ClaimValues {
    /// By [`ValueKey`]: the value as text (`None`: SQL NULL,
    /// which equals nothing), or `Err` where Postgres could not compute it.
    values: HashMap<ValueKey, Result<Option<String>, ()>>,
}

/// (role, claims, expression, the type its value is cast to)
type ValueKey = (Arc<str>, Arc<str>, String, String);

/// Most cached values before the cache starts afresh (subscribers come and go).
const MAX_VALUES: usize = 200_000;
/// Evaluations sent at once (pipelined on the connection).
const EVALUATIONS_AT_ONCE: usize = 500;

impl ClaimValues {
    /// The value of `expression` cast to `ty` for these claims, if computed.
    fn get(&self, role: &Arc<str>, claims: &Arc<str>, expression: &str, ty: &str) -> Option<&Option<String>> {
        self.values
            .get(&(role.clone(), claims.clone(), expression.to_string(), ty.to_string()))?
            .as_ref()
            .ok()
    }

    /// Computes the values not yet tried, for each (role, claims, expressions with the type they
    /// are compared as), as that subscriber. Returns how many subscribers were evaluated.
    async fn evaluate(&mut self, conn: &mut Client, mut missing: Wanted) -> Result<u64, tokio_postgres::Error> {
        let mut sent = 0;
        // Each round records at least one subscriber's values (or failure); a failure aborts the
        // round's transaction, and the subscribers after it go to the next round.
        loop {
            missing.retain_mut(|(role, claims, expressions)| {
                let key = |(e, ty): &(String, String)| (role.clone(), claims.clone(), e.clone(), ty.clone());
                expressions.retain(|e| !self.values.contains_key(&key(e)));
                !expressions.is_empty()
            });
            if missing.is_empty() {
                return Ok(sent);
            }
            if self.values.len() + missing.len() > MAX_VALUES {
                self.values.clear();
            }
            sent += self.evaluate_round(conn, &missing).await?;
        }
    }

    /// One transaction: each subscriber's role and claims set, then its expressions selected, all
    /// sent at once (prepared statements keep them in order), until the first that fails.
    async fn evaluate_round(&mut self, conn: &mut Client, missing: &Wanted) -> Result<u64, tokio_postgres::Error> {
        let tx = conn.transaction().await?;
        let mut record = |(role, claims, expressions): &(Arc<str>, Arc<str>, Vec<(String, String)>),
                          row: Option<&tokio_postgres::Row>| {
            for (n, (e, ty)) in expressions.iter().enumerate() {
                let value = row.map(|row| row.get(n)).ok_or(());
                self.values
                    .insert((role.clone(), claims.clone(), e.clone(), ty.clone()), value);
            }
        };
        let set = tx
            .prepare("select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)")
            .await?;
        // Prepared as a subscriber: resolving `auth.uid` needs USAGE on its schema, which the
        // replicator's own role need not have. The expressions are the policies' own text.
        let (first_role, first_claims, _) = &missing[0];
        if let Err(e) = tx.execute(&set, &[&&**first_role, &&**first_claims]).await {
            if e.as_db_error().is_none() {
                return Err(e);
            }
            // A role that does not exist.
            record(&missing[0], None);
            return Ok(1);
        }
        let mut selects: HashMap<String, tokio_postgres::Statement> = HashMap::new();
        for subscriber in missing {
            let sql = select_of(&subscriber.2);
            if selects.contains_key(&sql) {
                continue;
            }
            match tx.prepare(&sql).await {
                Ok(statement) => selects.insert(sql, statement),
                Err(e) => {
                    if e.as_db_error().is_none() {
                        return Err(e);
                    }
                    // The expressions do not compile for them.
                    missing
                        .iter()
                        .filter(|s| select_of(&s.2) == sql)
                        .for_each(|s| record(s, None));
                    return Ok(0);
                }
            };
        }
        let mut sent = 0;
        for chunk in missing.chunks(EVALUATIONS_AT_ONCE) {
            let mut steps = Vec::new();
            for (role, claims, expressions) in chunk {
                let (set, select, tx) = (&set, &selects[&select_of(expressions)], &tx);
                steps.push(async move { tx.execute(set, &[&&**role, &&**claims]).await.map(|_| None) }.boxed());
                steps.push(async move { tx.query_one(select, &[]).await.map(Some) }.boxed());
            }
            // Sent in the order polled: each subscriber's settings just before its select.
            let mut answers = futures_util::future::join_all(steps).await.into_iter();
            for subscriber in chunk {
                let (set, select) = (answers.next().expect("a set"), answers.next().expect("a select"));
                sent += 1;
                match set.and(select) {
                    Ok(row) => record(subscriber, row.as_ref()),
                    // These claims do not evaluate (a `sub` that is not a uuid): the transaction
                    // refuses the rest, the next round takes them.
                    Err(e) => {
                        if e.as_db_error().is_none() {
                            return Err(e);
                        }
                        record(subscriber, None);
                        return Ok(sent);
                    }
                }
            }
        }
        // Nothing to keep: the settings end with the transaction.
        tx.rollback()
            .await
            .or_else(|e| if e.as_db_error().is_some() { Ok(()) } else { Err(e) })?;
        Ok(sent)
    }
}

/// The statement selecting `expressions`, each cast to its column's type, as text (an array
/// type: its elements as a JSON array of texts).
fn select_of(expressions: &[(String, String)]) -> String {
    let columns = expressions
        .iter()
        .map(|(expression, ty)| match ty.ends_with("[]") {
            true => format!("(select array_to_json(array(select v::text from unnest(({expression})::{ty}) v)))::text"),
            false => format!("(({expression})::{ty})::text"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("select {columns}")
}

#[cfg(test)]
mod tests {
    use sluice_shared::pgvalue::oid;
    use sluice_shared::position::Lsn;

    use super::*;
    use crate::source::change::{Datum, RelColumn};
    use crate::subscriptions::registry::ChannelKey;

    const UID: &str = "auth.uid()";

    /// An insert into `notes (id int8, owner uuid, room int8)`; `None` cells are unchanged TOAST.
    fn insert(owner: Option<&str>, room: &str, action: Action) -> RowChange {
        let col = |name: &str, type_oid| RelColumn {
            name: name.into(),
            type_oid,
            identity: name == "id",
        };
        let relation = Relation {
            relid: 7,
            schema: "public".into(),
            table: "notes".into(),
            columns: vec![col("id", oid::INT8), col("owner", oid::TEXT), col("room", oid::INT8)],
        };
        let owner = owner.map_or(Datum::Unchanged, |o| Datum::Text(o.into()));
        RowChange {
            lsn: Lsn(1),
            seq: 0,
            commit_micros: 0,
            relation: Arc::new(relation),
            action,
            new: Some(vec![Datum::Text("1".into()), owner, Datum::Text(room.into())]),
            old: None,
            old_is_key: false,
        }
    }

    fn sub(socket: &str, role: &str) -> Arc<Sub> {
        Arc::new(Sub {
            channel: ChannelKey {
                hub: "h".into(),
                socket: socket.into(),
                topic: "realtime:t".into(),
            },
            binding_id: 1,
            action: Action::All,
            conditions: Vec::new(),
            select: None,
            role: role.into(),
            claims: format!(r#"{{"sub":"{socket}"}}"#).into(),
        })
    }

    /// A subscriber's value of `auth.uid()` (`Err`: it did not evaluate).
    type Value<'a> = (&'a Arc<Sub>, Result<Option<&'a str>, ()>);

    /// Values of `auth.uid()` as uuid per subscriber.
    fn values(of: &[Value]) -> ClaimValues {
        let mut values = ClaimValues::default();
        for (sub, value) in of {
            let key = (
                sub.role.clone(),
                sub.claims.clone(),
                UID.to_string(),
                "uuid".to_string(),
            );
            values.values.insert(key, value.map(|v| v.map(str::to_string)));
        }
        values
    }

    fn audience(subs: &[Arc<Sub>], rules: &[(&str, Rule)], values: &ClaimValues) -> Audience {
        let roles = rules
            .iter()
            .map(|(role, rule)| {
                let mine: Vec<Arc<Sub>> = subs.iter().filter(|s| &*s.role == *role).cloned().collect();
                let index = match rule {
                    Rule::Links { links, .. } => Index::build(&mine, links, values),
                    _ => Index::default(),
                };
                RoleAudience {
                    role: (*role).into(),
                    subs: mine,
                    rule: rule.clone(),
                    index,
                }
            })
            .collect();
        Audience {
            subs: Arc::new(subs.to_vec()),
            rls: true,
            roles,
        }
    }

    fn reached(audience: &Audience, change: &RowChange, members: &Memberships) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        audience.reach(change, members, |sub, verdict, _| {
            out.push((sub.channel.socket.clone(), matches!(verdict, Verdict::Visible)));
        });
        out.sort();
        out
    }

    #[test]
    fn array_elements_as_pgoutput_sends_them() {
        assert_eq!(array_elements("{}"), Some(vec![]));
        assert_eq!(array_elements("{1,NULL,3}"), Some(vec!["1", "3"]));
        let uuids = "{0b3c7a52-8f9d-4f3e-9d5c-1a2b3c4d5e01,0b3c7a52-8f9d-4f3e-9d5c-1a2b3c4d5e02}";
        assert_eq!(array_elements(uuids).map(|e| e.len()), Some(2));
        // Anything else cannot be placed: every subscriber is a candidate.
        for other in ["{{1,2},{3,4}}", "[0:1]={1,2}", "{\"a,b\"}", "1,2", "{1,,2}"] {
            assert_eq!(array_elements(other), None, "{other}");
        }
    }

    fn owner_link() -> Resolved {
        Resolved::Column {
            column: 1,
            expression: UID.into(),
            ty: "uuid".into(),
        }
    }

    #[test]
    fn a_row_reaches_its_owner_only_and_unknown_values_are_confirmed() {
        let (a, b, c, anon) = (
            sub("a", "authenticated"),
            sub("b", "authenticated"),
            sub("c", "authenticated"),
            sub("x", "anon"),
        );
        let values = values(&[(&a, Ok(Some("a"))), (&b, Ok(Some("b"))), (&c, Err(()))]);
        let exact = Rule::Links {
            links: vec![owner_link()],
            exact: true,
        };
        let subs = [a, b, c, anon];
        let audience = audience(&subs, &[("authenticated", exact), ("anon", Rule::Unknown)], &values);
        let none = Memberships::new();
        let row = insert(Some("b"), "1", Action::Insert);
        // b without a check (exact), c and anon confirmed by Postgres.
        let want = |v: &[(&str, bool)]| v.iter().map(|(s, e)| (s.to_string(), *e)).collect::<Vec<_>>();
        assert_eq!(
            reached(&audience, &row, &none),
            want(&[("b", true), ("c", false), ("x", false)])
        );
        // An owner no one has: only those who must be asked.
        assert_eq!(
            reached(&audience, &insert(Some("z"), "1", Action::Insert), &none),
            want(&[("c", false), ("x", false)])
        );
        // The column was not sent (unchanged TOAST): everyone of the role, confirmed.
        assert_eq!(
            reached(&audience, &insert(None, "1", Action::Insert), &none),
            want(&[("a", false), ("b", false), ("c", false), ("x", false)])
        );
        // Deletes are not RLS-checked: everyone.
        assert_eq!(
            reached(&audience, &insert(Some("b"), "1", Action::Delete), &none).len(),
            4
        );
    }

    #[test]
    fn membership_reaches_the_members_of_the_rows_key_confirmed() {
        let (a, b, c) = (
            sub("a", "authenticated"),
            sub("b", "authenticated"),
            sub("c", "authenticated"),
        );
        let values = values(&[(&a, Ok(Some("a"))), (&b, Ok(Some("b"))), (&c, Ok(None))]);
        let read = Arc::new(MembershipRead {
            select: "select".into(),
            reader: "r".into(),
            filters: vec![],
        });
        let rule = Rule::Links {
            links: vec![Resolved::Membership {
                column: Some(2),
                expression: UID.into(),
                ty: "uuid".into(),
                read: read.clone(),
            }],
            exact: false,
        };
        let subs = [a, b, c];
        let audience = audience(&subs, &[("authenticated", rule)], &values);
        let members: Memberships = HashMap::from([(
            read.clone(),
            Some(HashMap::from([(
                "1".to_string(),
                vec!["a".to_string(), "c".to_string()],
            )])),
        )]);
        let row = insert(Some("b"), "1", Action::Insert);
        assert_eq!(reached(&audience, &row, &members), vec![("a".to_string(), false)]);
        assert!(reached(&audience, &insert(Some("b"), "2", Action::Insert), &members).is_empty());
        // The membership could not be read: everyone, confirmed.
        let unread: Memberships = HashMap::from([(read, None)]);
        assert_eq!(reached(&audience, &row, &unread).len(), 3);
    }
}
