//! Which subscribers *could* see a row, learnt from the table's policies, so that the batched RLS
//! query runs only for them (candidates) instead of for every subscriber of the table.
//!
//! The shape recognised is the one per-user apps write: a permissive SELECT policy
//! `column = <claims expression>` (`user_id = auth.uid()`, `(select auth.uid())`,
//! `auth.jwt() ->> 'sub'`, `current_setting('request.jwt.claims', true)::json ->> 'sub'`, with
//! casts), where the expression depends on the subscriber's claims only. Its value per subscriber
//! is computed once by Postgres, as that subscriber, and cached; a row is then a candidate for a
//! subscriber only if the row's column equals that value (compared as text, for types whose
//! equality is equality of their text).
//!
//! Narrowing is a superset, never a decision: a candidate is still checked by Postgres (the
//! existing query), so restrictive policies and everything else keep Postgres's semantics.
//! Anything not recognised — a permissive policy of another shape, a role that bypasses RLS or
//! owns the table, a column type outside the list — means "every subscriber is a candidate", as
//! before.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio_postgres::Client;

use crate::source::change::Relation;

/// Column types whose `=` is equality of their canonical text.
const TEXT_EQUAL_TYPES: [&str; 8] = ["int2", "int4", "int8", "text", "varchar", "uuid", "bool", "oid"];

/// A permissive policy `column = expression` with `expression` depending on the claims only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Equality {
    /// The column, as the catalog names it (unquoted).
    pub column: String,
    /// The expression, as `pg_get_expr` printed it.
    pub expression: String,
}

/// `pg_get_expr(polqual)` of a permissive policy, as an [`Equality`] if it has that shape.
pub fn equality(qual: &str) -> Option<Equality> {
    let qual = strip_outer_parens(qual.trim());
    let tokens = tokens(qual)?;
    // Exactly one `=` at depth 0.
    let mut depth = 0i32;
    let mut split = None;
    for (i, token) in tokens.iter().enumerate() {
        match token.text.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            "=" if depth == 0 && split.replace(i).is_some() => return None,
            _ => {}
        }
    }
    let split = split?;
    let (left, right) = (&tokens[..split], &tokens[split + 1..]);
    let (column, expression) = match (column_of(left), column_of(right)) {
        (Some(c), None) => (c, right),
        (None, Some(c)) => (c, left),
        _ => return None,
    };
    if !claims_only(expression) {
        return None;
    }
    let start = expression.first()?.start;
    let end = expression.last().map(|t| t.start + t.text.len())?;
    Some(Equality {
        column,
        expression: qual[start..end].trim().to_string(),
    })
}

/// Whether rows of a column of this type can be matched against a value by their text.
pub fn text_equal(typname: &str) -> bool {
    TEXT_EQUAL_TYPES.contains(&typname)
}

#[derive(Debug, PartialEq)]
struct Token {
    text: String,
    start: usize,
    quoted: bool,
}

/// SQL as `pg_get_expr` prints it: identifiers (maybe dotted, maybe quoted), string literals,
/// numbers, operators and parentheses. `None` on anything unexpected.
fn tokens(sql: &str) -> Option<Vec<Token>> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '\'' {
            i = past_quoted(bytes, i)?;
            out.push(Token {
                text: sql[start..i].to_string(),
                start,
                quoted: false,
            });
            continue;
        }
        if c == '"' || c.is_ascii_alphabetic() || c == '_' {
            // An identifier, possibly dotted (`auth.uid`), parts possibly quoted.
            let mut quoted = false;
            loop {
                if bytes.get(i) == Some(&b'"') {
                    quoted = true;
                    i = past_quoted(bytes, i)?;
                } else {
                    while bytes
                        .get(i)
                        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$')
                    {
                        i += 1;
                    }
                }
                if bytes.get(i) == Some(&b'.')
                    && bytes
                        .get(i + 1)
                        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'"' || *b == b'_')
                {
                    i += 1;
                    continue;
                }
                break;
            }
            out.push(Token {
                text: sql[start..i].to_string(),
                start,
                quoted,
            });
            continue;
        }
        if c.is_ascii_digit() {
            while bytes.get(i).is_some_and(|b| b.is_ascii_digit() || *b == b'.') {
                i += 1;
            }
            out.push(Token {
                text: sql[start..i].to_string(),
                start,
                quoted: false,
            });
            continue;
        }
        let operator = ["->>", "::", "->", "(", ")", ",", "="]
            .into_iter()
            .find(|op| sql[i..].starts_with(op))?;
        i += operator.len();
        out.push(Token {
            text: operator.to_string(),
            start,
            quoted: false,
        });
    }
    Some(out)
}

/// Where a quoted literal (`'...'`) or identifier (`"..."`) opening at `open` ends: the index
/// after its closing quote; a doubled quote is one inside it. `None` if it never closes.
fn past_quoted(bytes: &[u8], open: usize) -> Option<usize> {
    let quote = bytes[open];
    let mut i = open + 1;
    loop {
        match bytes.get(i) {
            Some(&b) if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            Some(&b) if b == quote => return Some(i + 1),
            Some(_) => i += 1,
            None => return None,
        }
    }
}

/// A bare column name (one identifier, not a function, not dotted).
fn column_of(tokens: &[Token]) -> Option<String> {
    match tokens {
        [t] if !t.text.contains('.')
            && !t.text.starts_with('\'')
            && !t.text.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            let name = if t.quoted {
                t.text.trim_matches('"').replace("\"\"", "\"")
            } else {
                t.text.to_ascii_lowercase()
            };
            (!is_keyword(&name)).then_some(name)
        }
        // `(column)` as some printers wrap it.
        [open, inner, close] if open.text == "(" && close.text == ")" => column_of(std::slice::from_ref(inner)),
        _ => None,
    }
}

fn is_keyword(word: &str) -> bool {
    matches!(word, "true" | "false" | "null" | "select" | "as")
}

/// Functions whose value depends on the request's claims only (Supabase's `auth` helpers read
/// `request.jwt.claims`), and the words and types that may surround them.
const CLAIMS_FUNCTIONS: [&str; 7] = [
    "auth.uid",
    "auth.jwt",
    "auth.role",
    "auth.email",
    "current_setting",
    "nullif",
    "coalesce",
];
const CAST_TYPES: [&str; 14] = [
    "text",
    "json",
    "jsonb",
    "uuid",
    "bigint",
    "integer",
    "smallint",
    "int8",
    "int4",
    "int2",
    "boolean",
    "character",
    "varying",
    "name",
];

/// Whether an expression is built only from claims functions, literals, casts and `->>`.
fn claims_only(tokens: &[Token]) -> bool {
    let mut previous: Option<&str> = None;
    for (i, token) in tokens.iter().enumerate() {
        let text = token.text.as_str();
        let lower = text.to_ascii_lowercase();
        let next = tokens.get(i + 1).map(|t| t.text.as_str());
        let fine = match text.chars().next() {
            Some('\'') | Some('0'..='9') => true,
            Some('(' | ')' | ',') => true,
            _ if matches!(text, "::" | "->>" | "->") => true,
            _ if token.quoted => false,
            _ if CLAIMS_FUNCTIONS.contains(&lower.as_str()) => next == Some("("),
            _ if matches!(lower.as_str(), "select" | "true" | "false" | "null") => true,
            // `( SELECT auth.uid() AS uid)`: the alias after AS.
            _ if previous.is_some_and(|p| p.eq_ignore_ascii_case("as")) => true,
            _ if lower == "as" => true,
            // Type names, after `::`.
            _ if CAST_TYPES.contains(&lower.as_str()) => {
                previous == Some("::") || previous.is_some_and(|p| p.eq_ignore_ascii_case("character"))
            }
            _ => false,
        };
        if !fine {
            return false;
        }
        previous = Some(text);
    }
    // SELECT must be the scalar form `( SELECT <expr> AS alias)`: no FROM could get past the
    // word list above, so any SELECT here reads nothing but its expression.
    !tokens.is_empty()
}

fn strip_outer_parens(mut sql: &str) -> &str {
    loop {
        let trimmed = sql.trim();
        if !(trimmed.starts_with('(') && trimmed.ends_with(')')) {
            return trimmed;
        }
        // Only if the first parenthesis closes at the very end.
        let mut depth = 0;
        let mut in_literal = false;
        for (i, c) in trimmed.char_indices() {
            match c {
                '\'' => in_literal = !in_literal,
                '(' if !in_literal => depth += 1,
                ')' if !in_literal => {
                    depth -= 1;
                    if depth == 0 && i != trimmed.len() - 1 {
                        return trimmed;
                    }
                }
                _ => {}
            }
        }
        sql = &trimmed[1..trimmed.len() - 1];
    }
}

/// Per (table, role): the permissive policies' equalities as (relation column, expression), or
/// `None` when rows cannot be narrowed (another shape, RLS bypassed, a type not compared by text).
/// An empty list: no permissive policy applies, so no row is visible.
pub type Narrowing = Option<Vec<(usize, Equality)>>;

/// Per subscriber (role, claims), the expressions to evaluate with the column type each is cast to.
pub type Wanted = Vec<(Arc<str>, Arc<str>, Vec<(String, String)>)>;

/// What is known across batches: each subscriber's values of the expressions, by claims (the
/// expressions read the claims only; `None` is SQL NULL, which equals nothing).
#[derive(Default)]
pub struct Candidates {
    /// By (claims, expression, the type it is cast to).
    values: HashMap<(Arc<str>, String, String), Option<String>>,
}

/// Most cached values before the cache starts afresh (subscribers come and go).
const MAX_VALUES: usize = 200_000;
/// Evaluations sent at once (pipelined on the connection).
const EVALUATIONS_AT_ONCE: usize = 500;

impl Candidates {
    /// The table's policies for `role`, read fresh (one catalog query per table and role per
    /// batch, so a changed policy counts from the next batch on).
    pub async fn narrowing(
        &self,
        conn: &Client,
        relation: &Relation,
        typnames: &[String],
        role: &str,
    ) -> Result<Narrowing, tokio_postgres::Error> {
        let bypass: bool = conn
            .query_opt(
                "select r.rolbypassrls or pg_has_role($2::name, c.relowner, 'USAGE')
                 from pg_roles r, pg_class c where r.rolname = $2 and c.oid = $1",
                &[&relation.relid, &role],
            )
            .await?
            .is_none_or(|row| row.get(0));
        if bypass {
            return Ok(None);
        }
        let rows = conn
            .query(
                "select pg_get_expr(p.polqual, p.polrelid) from pg_policy p
                 where p.polrelid = $1 and p.polpermissive and p.polcmd in ('r', '*')
                   and exists (select from unnest(p.polroles) r where r = 0 or pg_has_role($2::name, r, 'USAGE'))",
                &[&relation.relid, &role],
            )
            .await?;
        let mut equalities = Vec::new();
        for row in rows {
            let Some(qual) = row.get::<_, Option<String>>(0) else {
                return Ok(None);
            };
            let Some(equality) = equality(&qual) else {
                return Ok(None);
            };
            match relation.column(&equality.column) {
                Some(i) if typnames.get(i).is_some_and(|t| text_equal(t)) => equalities.push((i, equality)),
                _ => return Ok(None),
            }
        }
        Ok(Some(equalities))
    }

    /// The value of `expression` cast to `ty` for these claims, if computed.
    pub fn value(&self, claims: &Arc<str>, expression: &str, ty: &str) -> Option<&Option<String>> {
        self.values
            .get(&(claims.clone(), expression.to_string(), ty.to_string()))
    }

    /// Computes the values not yet known, for each (role, claims, expressions with the column type
    /// they are compared as), as that subscriber: in one transaction, each subscriber's role and
    /// claims set and then its expressions selected, all sent at once (prepared statements keep
    /// them in order). A failure leaves the values of it and of those after it unknown.
    pub async fn evaluate(&mut self, conn: &mut Client, wanted: Wanted) -> Result<u64, tokio_postgres::Error> {
        let missing: Wanted = wanted
            .into_iter()
            .filter_map(|(role, claims, expressions)| {
                let expressions: Vec<(String, String)> = expressions
                    .into_iter()
                    .filter(|(e, ty)| self.value(&claims, e, ty).is_none())
                    .collect();
                (!expressions.is_empty()).then_some((role, claims, expressions))
            })
            .collect();
        let Some((first_role, first_claims, _)) = missing.first() else {
            return Ok(0);
        };
        if self.values.len() + missing.len() > MAX_VALUES {
            self.values.clear();
        }
        let tx = conn.transaction().await?;
        let set = tx
            .prepare("select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)")
            .await?;
        // Prepared as a subscriber: resolving `auth.uid` needs USAGE on its schema, which the
        // replicator's own role need not have. The expressions are the policies' own text.
        tx.execute(&set, &[&&**first_role, &&**first_claims]).await?;
        let mut selects: HashMap<String, Option<tokio_postgres::Statement>> = HashMap::new();
        for (_, _, expressions) in &missing {
            if let std::collections::hash_map::Entry::Vacant(entry) = selects.entry(select_of(expressions)) {
                let prepared = tx.prepare(entry.key()).await.ok();
                entry.insert(prepared);
            }
        }
        let mut sent = 0;
        for chunk in missing.chunks(EVALUATIONS_AT_ONCE) {
            let mut steps = Vec::new();
            for (role, claims, expressions) in chunk {
                let Some(select) = selects[&select_of(expressions)].as_ref() else {
                    continue;
                };
                let (set, tx) = (&set, &tx);
                steps.push(
                    async move {
                        tx.execute(set, &[&&**role, &&**claims]).await?;
                        Ok::<_, tokio_postgres::Error>(None)
                    }
                    .boxed(),
                );
                steps.push(async move { tx.query_one(select, &[]).await.map(Some) }.boxed());
            }
            // Sent in the order polled: each subscriber's settings just before its select.
            let answers = futures_util::future::join_all(steps).await;
            sent += chunk.len() as u64;
            let mut answers = answers.into_iter().filter_map(|a| a.transpose());
            for (_, claims, expressions) in chunk {
                if selects[&select_of(expressions)].is_none() {
                    continue;
                }
                match answers.next() {
                    Some(Ok(row)) => {
                        for (n, (expression, ty)) in expressions.iter().enumerate() {
                            self.values
                                .insert((claims.clone(), expression.clone(), ty.clone()), row.get(n));
                        }
                    }
                    Some(Err(e)) if e.as_db_error().is_some() => {}
                    Some(Err(e)) => return Err(e),
                    None => break,
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

/// The statement selecting `expressions`, each cast to its column's type, as text.
fn select_of(expressions: &[(String, String)]) -> String {
    let columns = expressions
        .iter()
        .map(|(expression, ty)| format!("(({expression})::{ty})::text"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("select {columns}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(column: &str, expression: &str) -> Option<Equality> {
        Some(Equality {
            column: column.into(),
            expression: expression.into(),
        })
    }

    #[test]
    fn the_forms_people_write_as_pg_get_expr_prints_them() {
        assert_eq!(equality("(user_id = auth.uid())"), eq("user_id", "auth.uid()"));
        assert_eq!(equality("(auth.uid() = user_id)"), eq("user_id", "auth.uid()"));
        assert_eq!(
            equality("(user_id = ( SELECT auth.uid() AS uid))"),
            eq("user_id", "( SELECT auth.uid() AS uid)")
        );
        assert_eq!(
            equality("(owner = (auth.jwt() ->> 'sub'::text))"),
            eq("owner", "(auth.jwt() ->> 'sub'::text)")
        );
        assert_eq!(
            equality("(owner = ((current_setting('request.jwt.claims'::text, true))::json ->> 'sub'::text))"),
            eq(
                "owner",
                "((current_setting('request.jwt.claims'::text, true))::json ->> 'sub'::text)"
            )
        );
        assert_eq!(equality("(\"userId\" = auth.uid())"), eq("userId", "auth.uid()"));
        assert_eq!(
            equality("(user_id = ((auth.jwt() ->> 'sub'::text))::uuid)"),
            eq("user_id", "((auth.jwt() ->> 'sub'::text))::uuid")
        );
    }

    #[test]
    fn anything_else_is_not_narrowed() {
        for qual in [
            "true",
            "(user_id = auth.uid()) OR (public = true)",
            "((user_id = auth.uid()) AND (archived = false))",
            "(EXISTS ( SELECT 1 FROM members m WHERE ((m.room_id = t.room_id) AND (m.user_id = auth.uid()))))",
            "(user_id = owner_id)",
            "(user_id = lower(auth.uid()::text))",
            "(user_id = ( SELECT members.user_id FROM members LIMIT 1))",
            "(user_id <> auth.uid())",
            "(auth.uid() = auth.uid())",
            "(user_id = my_uid())",
            "(user_id = 'x'::text)",
        ] {
            // A constant is claims-only too; only the ones above with columns or other functions
            // must be refused.
            if qual == "(user_id = 'x'::text)" {
                assert!(equality(qual).is_some());
                continue;
            }
            assert_eq!(equality(qual), None, "{qual}");
        }
    }

    #[test]
    fn types_compared_by_text() {
        assert!(text_equal("uuid") && text_equal("int8") && text_equal("text"));
        assert!(!text_equal("numeric") && !text_equal("float8") && !text_equal("citext") && !text_equal("timestamptz"));
    }
}
