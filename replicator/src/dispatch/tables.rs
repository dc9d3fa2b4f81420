//! What the database says about a table, cached until its Relation message changes: quoted names,
//! primary key, `typname`s, whether RLS is on, and per role which columns it may select. And the
//! batched visibility query that applies RLS: one query per (table, role + claims) for all keys.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use crate::source::change::Relation;

/// A table's catalog facts, aligned with its [`Relation`]'s columns.
#[derive(Debug)]
pub struct TableInfo {
    /// `"schema"."table"`, quoted by Postgres.
    pub quoted_name: String,
    pub rls: bool,
    /// Per relation column.
    pub typnames: Vec<String>,
    pub pk: Vec<bool>,
    /// Per relation column, whether `=` on it is byte equality (no nondeterministic collation).
    pub deterministic: Vec<bool>,
    /// Quoted column names and their `format_type` types, per relation column.
    quoted_columns: Vec<String>,
    types: Vec<String>,
    /// The primary-key columns' indexes, in key order.
    pub pk_columns: Vec<usize>,
}

impl TableInfo {
    /// A column's type as `format_type` prints it (what casts name).
    pub fn column_type(&self, column: usize) -> &str {
        &self.types[column]
    }
}

#[derive(Default)]
pub struct Tables {
    info: HashMap<u32, Arc<TableInfo>>,
    /// Per table, per role.
    selectable: HashMap<u32, HashMap<Arc<str>, Arc<Vec<bool>>>>,
}

impl Tables {
    /// Forgets what was known of a table (its Relation message arrived again: it may have changed).
    pub fn invalidate(&mut self, relid: u32) {
        self.info.remove(&relid);
        self.selectable.remove(&relid);
    }

    /// What [`Tables::info`] last returned for the table, if it is still cached.
    pub fn cached(&self, relid: u32) -> Option<Arc<TableInfo>> {
        self.info.get(&relid).cloned()
    }

    /// What [`Tables::selectable`] last returned for the table and role, if still cached.
    pub fn cached_selectable(&self, relid: u32, role: &str) -> Option<Arc<Vec<bool>>> {
        self.selectable.get(&relid)?.get(role).cloned()
    }

    pub async fn info(&mut self, db: &Client, relation: &Relation) -> Result<Arc<TableInfo>, tokio_postgres::Error> {
        if let Some(info) = self.info.get(&relation.relid) {
            return Ok(info.clone());
        }
        let table = db
            .query_one(
                "select format('%I.%I', n.nspname, c.relname), c.relrowsecurity
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = $1",
                &[&relation.relid],
            )
            .await?;
        let rows = db
            .query(
                "select a.attname::text, quote_ident(a.attname), t.typname::text, format_type(a.atttypid, a.atttypmod),
                        array_position(i.indkey::int2[], a.attnum), coalesce(co.collisdeterministic, true)
                 from pg_attribute a
                 join pg_type t on t.oid = a.atttypid
                 left join pg_collation co on co.oid = a.attcollation
                 left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
                 where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped",
                &[&relation.relid],
            )
            .await?;
        let n = relation.columns.len();
        let mut info = TableInfo {
            quoted_name: table.get(0),
            rls: table.get(1),
            typnames: vec![String::new(); n],
            pk: vec![false; n],
            deterministic: vec![true; n],
            quoted_columns: vec![String::new(); n],
            types: vec![String::new(); n],
            pk_columns: Vec::new(),
        };
        let mut key: Vec<(i32, usize)> = Vec::new();
        for row in rows {
            let Some(i) = relation.column(row.get(0)) else {
                continue;
            };
            info.quoted_columns[i] = row.get(1);
            info.typnames[i] = row.get(2);
            info.types[i] = row.get(3);
            info.deterministic[i] = row.get(5);
            if let Some(position) = row.get::<_, Option<i32>>(4) {
                info.pk[i] = true;
                key.push((position, i));
            }
        }
        key.sort();
        info.pk_columns = key.into_iter().map(|(_, i)| i).collect();
        let info = Arc::new(info);
        self.info.insert(relation.relid, info.clone());
        Ok(info)
    }

    /// Caches what the catalog would say of a table (tests of what is built from it).
    #[cfg(test)]
    pub fn remember(&mut self, relid: u32, typnames: &[&str], pk_columns: &[usize], rls: bool, role: &str) {
        let n = typnames.len();
        let mut pk = vec![false; n];
        for &i in pk_columns {
            pk[i] = true;
        }
        let info = TableInfo {
            quoted_name: format!("t{relid}"),
            rls,
            typnames: typnames.iter().map(|t| t.to_string()).collect(),
            pk,
            deterministic: vec![true; n],
            quoted_columns: vec![String::new(); n],
            types: vec![String::new(); n],
            pk_columns: pk_columns.to_vec(),
        };
        self.info.insert(relid, Arc::new(info));
        self.selectable
            .entry(relid)
            .or_default()
            .insert(Arc::from(role), Arc::new(vec![true; n]));
    }

    /// Per relation column, whether `role` may select it.
    pub async fn selectable(
        &mut self,
        db: &Client,
        relation: &Relation,
        role: &Arc<str>,
    ) -> Result<Arc<Vec<bool>>, tokio_postgres::Error> {
        if let Some(known) = self.cached_selectable(relation.relid, role) {
            return Ok(known);
        }
        let rows = db
            .query(
                "select a.attname::text from pg_attribute a
                 where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
                   and has_column_privilege($2::name, a.attrelid, a.attnum, 'SELECT')",
                &[&relation.relid, &&**role],
            )
            .await?;
        let mut selectable = vec![false; relation.columns.len()];
        for row in rows {
            if let Some(i) = relation.column(row.get(0)) {
                selectable[i] = true;
            }
        }
        let selectable = Arc::new(selectable);
        self.selectable
            .entry(relation.relid)
            .or_default()
            .insert(role.clone(), selectable.clone());
        Ok(selectable)
    }
}

/// The visibility query of a table: which of the keys given as text arrays (one per key column,
/// `$1`, `$2`, …) the current role and claims can see through RLS. Only catalog-quoted names are
/// part of its text.
pub fn visibility_sql(info: &TableInfo) -> String {
    let columns: Vec<&str> = info
        .pk_columns
        .iter()
        .map(|&i| info.quoted_columns[i].as_str())
        .collect();
    let arrays: Vec<String> = info
        .pk_columns
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("${}::text[]::{}[]", n + 1, info.types[i]))
        .collect();
    let selected = columns
        .iter()
        .map(|c| format!("{c}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    match (&columns[..], &arrays[..]) {
        // One key column: an index scan over the array.
        ([column], [array]) => format!(
            "select {selected} from {} where {column} = any({array})",
            info.quoted_name
        ),
        _ => format!(
            "select {selected} from {} where ({}) in (select * from unnest({}))",
            info.quoted_name,
            columns.join(", "),
            arrays.join(", ")
        ),
    }
}

/// What [`visibility_sql`] returned: the visible keys.
pub fn keys_of(rows: &[tokio_postgres::Row], columns: usize) -> HashSet<Vec<String>> {
    rows.iter()
        .map(|row| (0..columns).map(|n| row.get::<_, String>(n)).collect())
        .collect()
}

/// `keys` as [`visibility_sql`]'s parameters: one text array per key column.
pub fn key_columns(keys: &[Vec<String>], columns: usize) -> Vec<Vec<&str>> {
    (0..columns)
        .map(|n| keys.iter().map(|k| k[n].as_str()).collect())
        .collect()
}
