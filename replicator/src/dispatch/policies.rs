//! What a row-level security policy says about who can see a row, when it has a shape people
//! write, read from its text as `pg_get_expr` prints it (pure: no database here).
//!
//! - `column = <claims expression>` (`user_id = auth.uid()`, `(select auth.uid())`,
//!   `auth.jwt() ->> 'sub'`, `current_setting('request.jwt.claims', true)::json ->> 'sub'`, with
//!   casts), either way round, the column maybe cast (`(user_id)::text = …`): the row is visible
//!   to subscribers whose value of the expression equals the column.
//! - membership through another table, `exists (select 1 from members m where m.room_id =
//!   t.room_id and m.user_id = auth.uid())` or `room_id in (select m.room_id from members m where
//!   m.user_id = auth.uid())`: visible to subscribers whose value is a member of the row's key.
//! - an expression of the claims alone (`true`, `auth.role() = 'authenticated'`): visible to
//!   every subscriber for whom it is true.
//! - `<claims expression> = ANY (array_column)`: visible to subscribers whose value is one of the
//!   row's elements.
//! - `a OR b OR …` of the above: visible to the union of their audiences.
//!
//! "The claims alone" is decided by a whitelist of tokens: Supabase's `auth` helpers (which read
//! `request.jwt.claims`), `current_setting`, literals, casts and `->>`; no column, no FROM.

use super::sql::{parts, single, split_all, split_at, text_of, tokens, unwrap, Token};

/// How a permissive policy ties a row to the subscribers who may see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// `column = expression`, or `(column)::cast = expression`.
    Column {
        column: String,
        expression: String,
        /// The type the column is cast to before the comparison, as printed (`text`).
        cast: Option<String>,
    },
    /// A row is visible to the members of its `column`'s value in `tables`: rows of `tables`
    /// (one, or two joined where the `joins` columns are equal) whose `key` equals the column,
    /// whose `member` equals the expression, and whose `filters` columns hold their values.
    /// Without a column (and key), every row is visible to the subscribers `tables` have a
    /// member row for: a condition of the subscriber alone.
    Membership {
        column: Option<String>,
        /// The tables as printed (maybe schema-qualified, maybe quoted).
        tables: Vec<String>,
        key: Option<Field>,
        member: Field,
        expression: String,
        /// `(column, value)`: conditions `m.column = <literal>` of the subquery.
        filters: Vec<(Field, String)>,
        joins: Vec<(Field, Field)>,
    },
    /// `expression = ANY (column)`: the row is visible to each of its array's elements.
    AnyElement { column: String, expression: String },
    /// `column = ANY (<array of the claims>)` or `column IN (SELECT <set of the claims>)`
    /// (`jsonb_array_elements_text(auth.jwt() -> 'rooms')`): visible to subscribers whose array
    /// holds the column's value. `expression` is array-valued (the IN form as `ARRAY(…)`).
    AmongClaims { column: String, expression: String },
    /// The whole condition reads only the claims: every row or none, per subscriber.
    Claims { expression: String },
}

/// The [`Link`]s a permissive policy's `pg_get_expr(polqual)` on table `table` (its name, as
/// `pg_get_expr` qualifies the table's own columns in subqueries) has: one, or one per part of an
/// `OR` (the row is visible to the union of their audiences). `None` unless every part has one.
pub fn links(qual: &str, table: &str) -> Option<Vec<Link>> {
    let all = tokens(qual)?;
    let tokens = unwrap(&all);
    if claims_only(tokens) {
        return Some(vec![Link::Claims {
            expression: text_of(qual, tokens)?,
        }]);
    }
    split_all(tokens, "OR")
        .into_iter()
        .map(|part| link(qual, unwrap(part), table))
        .collect()
}

/// The [`Link`] of one condition (no top-level `OR`): `tokens` of `qual`.
fn link(qual: &str, tokens: &[Token], table: &str) -> Option<Link> {
    if claims_only(tokens) {
        return Some(Link::Claims {
            expression: text_of(qual, tokens)?,
        });
    }
    if let Some((left, right)) = split_at(tokens, "=") {
        for (one, other) in [(left, right), (right, left)] {
            if let Some(column) = any_of(one, table) {
                return claims_only(other).then(|| Link::AnyElement {
                    column,
                    expression: text_of(qual, other).unwrap_or_default(),
                });
            }
            if let (Some(column), Some(array)) = (column_of(one, table), any_operand(other)) {
                return claims_only(array).then(|| Link::AmongClaims {
                    column,
                    expression: text_of(qual, array).unwrap_or_default(),
                });
            }
        }
        let ((column, cast), expression) = match (cast_column_of(left, table), cast_column_of(right, table)) {
            (Some(c), None) => (c, right),
            (None, Some(c)) => (c, left),
            _ => return None,
        };
        return claims_only(expression).then(|| Link::Column {
            column,
            expression: text_of(qual, expression).unwrap_or_default(),
            cast,
        });
    }
    // `column IN ( SELECT <claims> AS x)`: the set as an array.
    if let [column, in_, open, subquery @ .., close] = tokens {
        let is_in = !in_.quoted && in_.text.eq_ignore_ascii_case("in") && open.text == "(" && close.text == ")";
        if let (true, Some(column)) = (is_in, column_of(std::slice::from_ref(column), table)) {
            if claims_only(subquery) && subquery.first().is_some_and(|t| t.text.eq_ignore_ascii_case("select")) {
                return Some(Link::AmongClaims {
                    column,
                    expression: format!("ARRAY({})", text_of(qual, subquery)?),
                });
            }
        }
    }
    membership(qual, tokens, table)
}

/// What `ANY ( … )` holds.
fn any_operand(tokens: &[Token]) -> Option<&[Token]> {
    match tokens {
        [any, open, inner @ .., close] if !any.quoted && any.text.eq_ignore_ascii_case("any") && open.text == "(" && close.text == ")" => {
            Some(inner)
        }
        _ => None,
    }
}

/// Membership, in both forms: `EXISTS ( SELECT 1 FROM t [m] WHERE ((m.key = table.column) AND
/// (m.member = <claims>)))` and `column IN ( SELECT m.key FROM t [m] WHERE (m.member =
/// <claims>))`; either may also hold conditions `m.other = <literal>` (kept as filters), and may
/// read two tables joined by equal columns (`FROM (members m JOIN users u ON ((u.id =
/// m.user_id)))`, or `FROM members m, users u WHERE u.id = m.user_id`: two levels). An EXISTS
/// without the key condition depends on the subscriber alone (`EXISTS (SELECT 1 FROM admins a
/// WHERE a.user_id = auth.uid())`): the whole row set is visible to the members it finds.
/// Inside a one-table subquery an unqualified column is the subquery's own (SQL resolves it there
/// first, and the catalog check of the columns refuses it otherwise); with two tables every
/// column must be qualified.
fn membership(qual: &str, tokens: &[Token], table: &str) -> Option<Link> {
    // What follows EXISTS, or `column IN`.
    let (column, rest) = if word(tokens.first(), "exists") {
        (None, &tokens[1..])
    } else if word(tokens.get(1), "in") {
        (Some(column_of(&tokens[..1], table)?), &tokens[2..])
    } else {
        return None;
    };
    // `( SELECT <one token> FROM <sources> WHERE <condition> )`
    let [open, select, item, from, after @ .., close] = rest else {
        return None;
    };
    if open.text != "(" || close.text != ")" || !word(Some(select), "select") || !word(Some(from), "from") {
        return None;
    }
    let (sources, condition) = split_at(after, "WHERE")?;
    let (tables, on) = self::sources(sources)?;
    if tables.iter().any(|(_, name)| name == table) {
        return None; // a self-reference: which side is which cannot be told apart
    }
    // A column of one of the subquery's tables: qualified by its name or alias, or bare when
    // there is one table.
    let own = |token: &Token| match parts(token)?.as_slice() {
        [q, c] => tables.iter().position(|(_, name)| name == q).map(|table| Field { table, column: c.clone() }),
        [c] if tables.len() == 1 && !is_keyword(c) && !token.text.starts_with('$') => Some(Field { table: 0, column: c.clone() }),
        _ => None,
    };
    // A column of the policy's table, qualified by its name.
    let outer = |token: &Token| match parts(token)?.as_slice() {
        [q, c] if q == table => Some(c.clone()),
        _ => None,
    };
    let mut key = None; // (key, column)
    let mut member = None; // (member, expression)
    let mut filters = Vec::new();
    let mut joins = Vec::new();
    // For an inner join, ON and WHERE say the same: every condition must hold.
    let conditions = split_all(unwrap(condition), "AND").into_iter().chain(on.map(|on| split_all(unwrap(on), "AND")).unwrap_or_default());
    for part in conditions {
        let (left, right) = split_at(unwrap(part), "=")?;
        let found = [(left, right), (right, left)].into_iter().find_map(|(one, other)| {
            let mine = single(one).and_then(own)?;
            if let Some(column) = single(other).and_then(outer) {
                return Some(Condition::Key(mine, column));
            }
            if let Some(theirs) = single(other).and_then(own) {
                return (theirs.table != mine.table).then_some(Condition::Join(mine, theirs));
            }
            if let Some(value) = literal(other) {
                return Some(Condition::Filter(mine, value));
            }
            claims_only(other).then(|| Some(Condition::Member(mine, text_of(qual, other)?))).flatten()
        })?;
        let replaced = match found {
            Condition::Key(k, c) => key.replace((k, c)).is_some(),
            Condition::Member(m, e) => member.replace((m, e)).is_some(),
            Condition::Filter(c, v) => {
                filters.push((c, v));
                false
            }
            Condition::Join(a, b) => {
                joins.push((a, b));
                false
            }
        };
        if replaced {
            return None; // two conditions of one kind: not a shape read here
        }
    }
    if tables.len() == 2 && joins.is_empty() {
        return None; // every pair of the two tables' rows: not a membership
    }
    let (member, expression) = member?;
    let (column, key) = match (column, key) {
        // IN: the selected item is the key.
        (Some(column), None) => (Some(column), Some(own(item)?)),
        (None, key) => {
            if item.quoted || !(item.text.chars().all(|c| c.is_ascii_digit()) || item.text == "*") {
                return None;
            }
            key.map_or((None, None), |(key, column)| (Some(column), Some(key)))
        }
        (Some(_), Some(_)) => return None,
    };
    Some(Link::Membership {
        column,
        tables: tables.into_iter().map(|(printed, _)| printed).collect(),
        key,
        member,
        expression,
        filters,
        joins,
    })
}

/// The tables of a membership subquery's FROM, each as printed and with the name its columns are
/// qualified by (its alias, else its own name), and the join's ON condition: `t [[AS] a]`,
/// `(t [a] JOIN u [b] ON (…))` (an inner join, as `pg_get_expr` prints `INNER JOIN`) or `t [a], u [b]`.
fn sources(tokens: &[Token]) -> Option<(Vec<(String, String)>, Option<&[Token]>)> {
    // `name [[AS] alias]`, and what follows it.
    let table = |tokens: &[Token]| -> Option<(String, String)> {
        let (name, alias) = match tokens {
            [name] => (name, None),
            [name, as_, alias] if word(Some(as_), "as") => (name, Some(alias)),
            [name, alias] => (name, Some(alias)),
            _ => return None,
        };
        let not_alias = |a: &Token| !a.quoted && JOIN_WORDS.iter().chain(&SQL_WORDS).any(|w| a.text.eq_ignore_ascii_case(w));
        if name.text.starts_with('\'') || name.text == "(" || alias.is_some_and(not_alias) {
            return None;
        }
        let qualifier = parts(alias.unwrap_or(name))?.pop()?;
        Some((name.text.clone(), qualifier))
    };
    if let Some((first, second)) = split_at(tokens, ",") {
        return Some((vec![table(first)?, table(second)?], None));
    }
    if let [open, inner @ .., close] = tokens {
        if open.text == "(" && close.text == ")" {
            let (first, rest) = split_at(inner, "JOIN")?;
            let first = match first {
                [first @ .., inner_] if word(Some(inner_), "inner") => first,
                _ => first,
            };
            let (second, on) = split_at(rest, "ON")?;
            let tables = vec![table(first)?, table(second)?];
            return (tables[0].1 != tables[1].1).then_some((tables, Some(on)));
        }
    }
    Some((vec![table(tokens)?], None))
}

/// Words of joins other than the inner one (`LEFT JOIN`), which are not aliases.
const JOIN_WORDS: [&str; 8] = ["left", "right", "full", "cross", "natural", "inner", "lateral", "outer"];

/// Whether `token` is the unquoted keyword `w`.
fn word(token: Option<&Token>, w: &str) -> bool {
    token.is_some_and(|t| !t.quoted && t.text.eq_ignore_ascii_case(w))
}

/// A column of one of a membership subquery's tables (by its place in the FROM).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    pub table: usize,
    pub column: String,
}

/// One condition of a membership subquery's WHERE (or its join's ON).
enum Condition {
    /// `m.key = table.column`
    Key(Field, String),
    /// `m.member = <claims>`
    Member(Field, String),
    /// `m.column = <literal>`: the column and the literal's text.
    Filter(Field, String),
    /// `m.column = u.column`: the tables' rows that go together.
    Join(Field, Field),
}

/// The value of a literal as `pg_get_expr` prints it (`'admin'::text`, `'admin'::app_role`,
/// `42`, `true`), maybe in parentheses.
fn literal(tokens: &[Token]) -> Option<String> {
    let tokens = unwrap(tokens);
    let (first, rest) = tokens.split_first()?;
    let cast_ok = match rest {
        [] => true,
        [cast, ty @ ..] => cast.text == "::" && !ty.is_empty() && ty.iter().all(|t| !t.quoted && t.text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')),
    };
    if !cast_ok || first.quoted {
        return None;
    }
    let text = &first.text;
    if let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return Some(inner.replace("''", "'"));
    }
    (text.chars().all(|c| c.is_ascii_digit()) || text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false"))
        .then(|| text.to_ascii_lowercase())
}

/// Why a policy that [`links`] does not recognise is checked for every subscriber, and how to
/// write it so that it is not: one sentence for `sluice-replicator doctor` and the log.
pub fn advice(qual: &str) -> String {
    const SHAPES: &str = "`column = (select auth.uid())`, `exists (select 1 from members m where m.key = <table>.key and m.user_id = (select auth.uid()))`, or a condition of the claims alone";
    let Some(all) = tokens(qual) else {
        return format!("not read (an operator sluice does not parse); write it as {SHAPES}");
    };
    let tokens = unwrap(&all);
    let words = |w: &str| tokens.iter().any(|t| !t.quoted && t.text.eq_ignore_ascii_case(w));
    let call = tokens
        .windows(2)
        .find(|pair| pair[1].text == "(" && !pair[0].quoted && super::helpers::is_function_name(&pair[0]))
        .map(|pair| pair[0].text.clone());
    if let Some(function) = call {
        return format!("calls {function}(), which is not a LANGUAGE sql helper whose body is one SELECT of these shapes; write its condition as {SHAPES}");
    }
    if words("select") {
        return format!("a subquery sluice does not index (one that does not tie the row to the subscriber, or of another shape); indexed are {SHAPES}");
    }
    if split_at(tokens, "AND").is_some() || split_all(tokens, "AND").len() > 1 {
        return "an AND of conditions: keep the subscriber's condition (`column = (select auth.uid())`) in this permissive policy and move the others into a restrictive one".to_string();
    }
    if words("now") || words("current_timestamp") {
        return format!("depends on the time: checked for every subscriber; move the time condition into a restrictive policy and write this one as {SHAPES}");
    }
    format!("not a shape sluice indexes; write it as {SHAPES}")
}

/// Words that precede a parenthesis without being a function call.
pub(super) const SQL_WORDS: [&str; 16] = [
    "exists", "any", "all", "some", "in", "select", "and", "or", "not", "where", "from", "on", "join", "array", "when", "then",
];

/// Whether a column cast to `cast` (as `pg_get_expr` prints the type) compares as its output
/// text, for columns of a type whose `=` is text equality: casts to text only (a cast of text to
/// uuid, say, maps several texts to one value).
pub fn cast_compares_as_text(cast: &str) -> bool {
    matches!(cast, "text" | "character varying" | "varchar")
}

/// Why links [`links`] found still cannot be indexed, judged from the policy alone (column types
/// are checked against the catalog by the audience).
pub fn refusal(links: &[Link]) -> Option<String> {
    links.iter().find_map(|link| match link {
        Link::Column { column, cast: Some(cast), .. } if !cast_compares_as_text(cast) => Some(format!(
            "{column} is cast to {cast}, which several values of it can map to: compare it uncast, `{column} = (select auth.uid())::text`"
        )),
        _ => None,
    })
}








/// Whether rows of a column of this type can be matched against a value by their text: `=` is
/// equality of the output text (not `bool`: its cast to text says `true` where its output says `t`).
pub fn text_equal(typname: &str) -> bool {
    TEXT_EQUAL_TYPES.contains(&typname)
}

/// Column types whose `=` is equality of their canonical text.
const TEXT_EQUAL_TYPES: [&str; 7] = ["int2", "int4", "int8", "text", "varchar", "uuid", "oid"];




/// A column, maybe cast as `pg_get_expr` prints it (`(user_id)::text`, `(name)::character
/// varying`): its name and the type it is cast to.
fn cast_column_of(tokens: &[Token], table: &str) -> Option<(String, Option<String>)> {
    if let Some(column) = column_of(tokens, table) {
        return Some((column, None));
    }
    let cast = tokens.iter().position(|t| t.text == "::")?;
    let column = column_of(&tokens[..cast], table)?;
    let ty: Vec<&str> = tokens[cast + 1..].iter().map(|t| t.text.as_str()).collect();
    let ty = ty.join(" ").to_ascii_lowercase();
    (!ty.is_empty() && ty.split(' ').all(|w| CAST_TYPES.contains(&w))).then_some((column, Some(ty)))
}

/// `ANY (column)`: the column.
fn any_of(tokens: &[Token], table: &str) -> Option<String> {
    match tokens {
        [any, open, inner @ .., close] if !any.quoted && any.text.eq_ignore_ascii_case("any") && open.text == "(" && close.text == ")" => {
            column_of(inner, table)
        }
        _ => None,
    }
}

/// A column of the policy's table `table`: bare, or qualified by the table's name (as a helper
/// function's argument is put in place); not a function, not a literal.
fn column_of(tokens: &[Token], table: &str) -> Option<String> {
    match tokens {
        [t] if !t.text.starts_with('$') => match parts(t)?.as_slice() {
            [name] if !is_keyword(name) => Some(name.clone()),
            [qualifier, name] if qualifier == table => Some(name.clone()),
            _ => None,
        },
        // `(column)` as some printers wrap it.
        [open, inner, close] if open.text == "(" && close.text == ")" => column_of(std::slice::from_ref(inner), table),
        _ => None,
    }
}

fn is_keyword(word: &str) -> bool {
    matches!(word, "true" | "false" | "null" | "select" | "as")
}

/// Functions whose value depends on the request's claims only (Supabase's `auth` helpers read
/// `request.jwt.claims`), and the words and types that may surround them.
pub(super) const CLAIMS_FUNCTIONS: [&str; 9] = [
    "jsonb_array_elements_text",
    "json_array_elements_text",
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
            // `::bigint[]`, `ARRAY['a'::text]`
            Some('[') => previous.is_some_and(|p| CAST_TYPES.contains(&p.to_ascii_lowercase().as_str()) || p.eq_ignore_ascii_case("array")),
            Some(']') => true,
            _ if lower == "array" => matches!(next, Some("(" | "[")),
            _ if matches!(text, "::" | "->>" | "->" | "=") => true,
            _ if token.quoted => false,
            // `( SELECT auth.uid() AS uid)`: the alias after AS.
            _ if previous.is_some_and(|p| p.eq_ignore_ascii_case("as")) => true,
            _ if CLAIMS_FUNCTIONS.contains(&lower.as_str()) => next == Some("("),
            _ if matches!(lower.as_str(), "select" | "true" | "false" | "null") => true,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn column(column: &str, expression: &str) -> Option<Vec<Link>> {
        Some(vec![Link::Column {
            column: column.into(),
            expression: expression.into(),
            cast: None,
        }])
    }

    fn cast_column(column: &str, cast: &str, expression: &str) -> Link {
        Link::Column {
            column: column.into(),
            expression: expression.into(),
            cast: Some(cast.into()),
        }
    }

    fn on_notes(qual: &str) -> Option<Vec<Link>> {
        links(qual, "notes")
    }

    #[test]
    fn a_column_equal_to_a_claim_as_pg_get_expr_prints_it() {
        assert_eq!(on_notes("(user_id = auth.uid())"), column("user_id", "auth.uid()"));
        assert_eq!(on_notes("(auth.uid() = user_id)"), column("user_id", "auth.uid()"));
        assert_eq!(
            on_notes("(user_id = ( SELECT auth.uid() AS uid))"),
            column("user_id", "( SELECT auth.uid() AS uid)")
        );
        assert_eq!(
            on_notes("(owner = (auth.jwt() ->> 'sub'::text))"),
            column("owner", "(auth.jwt() ->> 'sub'::text)")
        );
        assert_eq!(
            on_notes("(owner = ((current_setting('request.jwt.claims'::text, true))::json ->> 'sub'::text))"),
            column(
                "owner",
                "((current_setting('request.jwt.claims'::text, true))::json ->> 'sub'::text)"
            )
        );
        assert_eq!(on_notes("(\"userId\" = auth.uid())"), column("userId", "auth.uid()"));
        assert_eq!(
            on_notes("(user_id = ((auth.jwt() ->> 'sub'::text))::uuid)"),
            column("user_id", "((auth.jwt() ->> 'sub'::text))::uuid")
        );
        assert_eq!(on_notes("(user_id = 'x'::text)"), column("user_id", "'x'::text"));
    }

    #[test]
    fn membership_through_another_table_in_both_forms() {
        let rooms = |table: &str, expression: &str| {
            Some(vec![Link::Membership {
                column: Some("room_id".into()),
                tables: vec![table.into()],
                key: Some(of(0, "room_id")),
                member: of(0, "user_id"),
                expression: expression.into(),
                filters: vec![],
                joins: vec![],
            }])
        };
        let on_messages = |qual: &str| links(qual, "messages");
        assert_eq!(
            on_messages(
                "(EXISTS ( SELECT 1\n   FROM members m\n  WHERE ((m.room_id = messages.room_id) AND (m.user_id = auth.uid()))))"
            ),
            rooms("members", "auth.uid()")
        );
        assert_eq!(
            on_messages(
                "(EXISTS ( SELECT 1 FROM public.members WHERE ((members.user_id = ( SELECT auth.uid() AS uid)) AND (messages.room_id = members.room_id))))"
            ),
            rooms("public.members", "( SELECT auth.uid() AS uid)")
        );
        assert_eq!(
            on_messages("(room_id IN ( SELECT m.room_id\n   FROM members m\n  WHERE (m.user_id = auth.uid())))"),
            rooms("members", "auth.uid()")
        );
        assert_eq!(
            on_messages(
                "(room_id IN ( SELECT members.room_id FROM members WHERE (members.user_id = ( SELECT auth.uid() AS uid))))"
            ),
            rooms("members", "( SELECT auth.uid() AS uid)")
        );
    }

    /// The `index`th table's `column` in a membership subquery.
    fn of(table: usize, column: &str) -> Field {
        Field { table, column: column.into() }
    }

    /// Printed by `pg_get_expr` (Postgres 15) for the policies in the comments.
    #[test]
    fn membership_two_levels_through_a_join() {
        let on_messages = |qual: &str| links(qual, "messages");
        // Channel members (`m`, first) joined with users (`u`) on `u.id = m.user_id`, keyed by
        // the channel, the member the user's `auth_id`.
        let two_levels = |filters: Vec<(Field, String)>| {
            Some(vec![Link::Membership {
                column: Some("channel_id".into()),
                tables: vec!["channel_members".into(), "users".into()],
                key: Some(of(0, "channel_id")),
                member: of(1, "auth_id"),
                expression: "auth.uid()".into(),
                filters,
                joins: vec![(of(1, "id"), of(0, "user_id"))],
            }])
        };
        // exists (select 1 from channel_members m join users u on u.id = m.user_id
        //         where m.channel_id = messages.channel_id and u.auth_id = auth.uid())
        assert_eq!(
            on_messages("(EXISTS ( SELECT 1\n   FROM (channel_members m\n     JOIN users u ON ((u.id = m.user_id)))\n  WHERE ((m.channel_id = messages.channel_id) AND (u.auth_id = auth.uid()))))"),
            two_levels(vec![])
        );
        // The tables the other way round, the subscriber as a scalar subquery, a filter:
        // ... from users u join channel_members m on m.user_id = u.id where … and m.role = 'admin'
        assert_eq!(
            on_messages("(EXISTS ( SELECT 1\n   FROM (users u\n     JOIN channel_members m ON ((m.user_id = u.id)))\n  WHERE ((m.channel_id = messages.channel_id) AND (u.auth_id = ( SELECT auth.uid() AS uid)) AND (m.role = 'admin'::text))))"),
            Some(vec![Link::Membership {
                column: Some("channel_id".into()),
                tables: vec!["users".into(), "channel_members".into()],
                key: Some(of(1, "channel_id")),
                member: of(0, "auth_id"),
                expression: "( SELECT auth.uid() AS uid)".into(),
                filters: vec![(of(1, "role"), "admin".into())],
                joins: vec![(of(1, "user_id"), of(0, "id"))],
            }])
        );
        // channel_id in (select m.channel_id from channel_members m inner join users u on u.id = m.user_id where u.auth_id = auth.uid())
        assert_eq!(
            on_messages("(channel_id IN ( SELECT m.channel_id\n   FROM (channel_members m\n     JOIN users u ON ((u.id = m.user_id)))\n  WHERE (u.auth_id = auth.uid())))"),
            two_levels(vec![])
        );
        // The join written in the WHERE: from channel_members m, users u where u.id = m.user_id and …
        assert_eq!(
            on_messages("(EXISTS ( SELECT 1\n   FROM channel_members m,\n    users u\n  WHERE ((u.id = m.user_id) AND (m.channel_id = messages.channel_id) AND (u.auth_id = auth.uid()))))"),
            two_levels(vec![])
        );
        // Without aliases, and with a filter in the ON.
        assert!(on_messages("(EXISTS ( SELECT 1\n   FROM (channel_members\n     JOIN users ON ((users.id = channel_members.user_id)))\n  WHERE ((channel_members.channel_id = messages.channel_id) AND (users.auth_id = auth.uid()))))").is_some());
        assert_eq!(
            on_messages("(EXISTS ( SELECT 1\n   FROM (channel_members m\n     JOIN users u ON (((u.id = m.user_id) AND (u.role = 'member'::text))))\n  WHERE ((m.channel_id = messages.channel_id) AND (u.auth_id = auth.uid()))))"),
            two_levels(vec![(of(1, "role"), "member".into())])
        );
        // Not these shapes: an outer join, no join condition, bare columns of two tables, three
        // tables, a join of a table with itself under one name.
        for qual in [
            "(EXISTS ( SELECT 1\n   FROM (channel_members m\n     LEFT JOIN users u ON ((u.id = m.user_id)))\n  WHERE ((m.channel_id = messages.channel_id) AND (u.auth_id = auth.uid()))))",
            "(EXISTS ( SELECT 1\n   FROM (channel_members\n     LEFT JOIN users ON ((users.id = channel_members.user_id)))\n  WHERE ((channel_members.channel_id = messages.channel_id) AND (users.auth_id = auth.uid()))))",
            "(EXISTS ( SELECT 1\n   FROM channel_members m,\n    users u\n  WHERE ((m.channel_id = messages.channel_id) AND (u.auth_id = auth.uid()))))",
            "(EXISTS ( SELECT 1\n   FROM channel_members m,\n    users u\n  WHERE ((id = user_id) AND (m.channel_id = messages.channel_id) AND (u.auth_id = auth.uid()))))",
            "(EXISTS ( SELECT 1\n   FROM channel_members m,\n    users u,\n    teams t\n  WHERE ((u.id = m.user_id) AND (m.channel_id = messages.channel_id) AND (u.auth_id = auth.uid()))))",
            "(EXISTS ( SELECT 1\n   FROM ((channel_members m\n     JOIN users u ON ((u.id = m.user_id)))\n     JOIN teams t ON ((t.id = u.team_id)))\n  WHERE ((m.channel_id = messages.channel_id) AND (u.auth_id = auth.uid()))))",
            "(EXISTS ( SELECT 1\n   FROM (users\n     JOIN public.users ON ((users.id = users.id)))\n  WHERE ((users.channel_id = messages.channel_id) AND (users.auth_id = auth.uid()))))",
        ] {
            assert_eq!(on_messages(qual), None, "{qual}");
        }
    }

    /// Printed by `pg_get_expr` (Postgres 15) for the policies in the comments, and the text
    /// helper functions become when put in place (see `helpers`).
    #[test]
    fn membership_with_constant_conditions_and_of_the_subscriber_alone() {
        let on_messages = |qual: &str| links(qual, "messages");
        // exists (select 1 from profiles where id = auth.uid() and role = 'admin')
        assert_eq!(
            on_messages("(EXISTS ( SELECT 1\n   FROM profiles\n  WHERE ((profiles.id = auth.uid()) AND (profiles.role = 'admin'::app_role))))"),
            Some(vec![Link::Membership {
                column: None,
                tables: vec!["profiles".into()],
                key: None,
                member: of(0, "id"),
                expression: "auth.uid()".into(),
                filters: vec![(of(0, "role"), "admin".into())],
                joins: vec![],
            }])
        );
        // has_role(auth.uid(), 'admin') put in place, OR the owner.
        assert_eq!(
            on_messages("((auth.uid() = user_id) OR (exists (select 1 from public.user_roles ur where ur.user_id = (auth.uid()) and ur.role = ('admin'::text))))"),
            Some(vec![
                Link::Column { column: "user_id".into(), expression: "auth.uid()".into(), cast: None },
                Link::Membership {
                    column: None,
                    tables: vec!["public.user_roles".into()],
                    key: None,
                    member: of(0, "user_id"),
                    expression: "(auth.uid())".into(),
                    filters: vec![(of(0, "role"), "admin".into())],
                    joins: vec![],
                },
            ])
        );
        // is_room_participant(room_id) put in place: unqualified columns of the subquery.
        assert_eq!(
            on_messages("(exists (select 1 from room_participants where room_id = messages.room_id and user_id = auth.uid()))"),
            Some(vec![Link::Membership {
                column: Some("room_id".into()),
                tables: vec!["room_participants".into()],
                key: Some(of(0, "room_id")),
                member: of(0, "user_id"),
                expression: "auth.uid()".into(),
                filters: vec![],
                joins: vec![],
            }])
        );
        // room_id in (select get_rooms('member')) put in place.
        assert_eq!(
            on_messages("(room_id IN (select room_id from room_participants where user_id = auth.uid() and role = ('member'::text)))"),
            Some(vec![Link::Membership {
                column: Some("room_id".into()),
                tables: vec!["room_participants".into()],
                key: Some(of(0, "room_id")),
                member: of(0, "user_id"),
                expression: "auth.uid()".into(),
                filters: vec![(of(0, "role"), "member".into())],
                joins: vec![],
            }])
        );
        // is_owner(user_id) put in place: `select $1 = auth.uid()`.
        assert_eq!(on_messages("((messages.user_id = auth.uid()))"), column("user_id", "auth.uid()"));
        // Two member conditions, a condition on another column of the row, or a join: not these shapes.
        for qual in [
            "(EXISTS ( SELECT 1 FROM admins a WHERE ((a.user_id = auth.uid()) AND (a.org = (auth.jwt() ->> 'org'::text)))))",
            "(EXISTS ( SELECT 1 FROM admins a WHERE ((a.user_id = auth.uid()) AND (a.org = messages.org) AND (a.team = messages.team))))",
            "(EXISTS ( SELECT 1 FROM admins a WHERE (a.user_id = 'x'::text)))",
        ] {
            assert_eq!(on_messages(qual), None, "{qual}");
        }
    }

    /// Printed by `pg_get_expr` (Postgres 15) for the policies in the comments.
    #[test]
    fn nested_claims_and_lists_of_the_claims() {
        let on_messages = |qual: &str| links(qual, "messages");
        // (auth.jwt() -> 'app_metadata' ->> 'org') = body
        assert_eq!(
            on_messages("(((auth.jwt() -> 'app_metadata'::text) ->> 'org'::text) = body)"),
            column("body", "((auth.jwt() -> 'app_metadata'::text) ->> 'org'::text)")
        );
        // ((auth.jwt() ->> 'user_metadata')::jsonb ->> 'team') = body
        assert_eq!(
            on_messages("((((auth.jwt() ->> 'user_metadata'::text))::jsonb ->> 'team'::text) = body)"),
            column("body", "(((auth.jwt() ->> 'user_metadata'::text))::jsonb ->> 'team'::text)")
        );
        let among = |column: &str, expression: &str| Some(vec![Link::AmongClaims { column: column.into(), expression: expression.into() }]);
        // room_id = any (array(select jsonb_array_elements_text(auth.jwt() -> 'app_metadata' -> 'rooms'))::bigint[])
        assert_eq!(
            on_messages("(room_id = ANY ((ARRAY( SELECT jsonb_array_elements_text(((auth.jwt() -> 'app_metadata'::text) -> 'rooms'::text)) AS jsonb_array_elements_text))::bigint[]))"),
            among("room_id", "(ARRAY( SELECT jsonb_array_elements_text(((auth.jwt() -> 'app_metadata'::text) -> 'rooms'::text)) AS jsonb_array_elements_text))::bigint[]")
        );
        // room_id in (select jsonb_array_elements_text(auth.jwt() -> 'rooms')::bigint)
        assert_eq!(
            on_messages("(room_id IN ( SELECT (jsonb_array_elements_text((auth.jwt() -> 'rooms'::text)))::bigint AS jsonb_array_elements_text))"),
            among("room_id", "ARRAY(SELECT (jsonb_array_elements_text((auth.jwt() -> 'rooms'::text)))::bigint AS jsonb_array_elements_text)")
        );
        // body in ('a', 'b')
        assert_eq!(on_messages("(body = ANY (ARRAY['a'::text, 'b'::text]))"), among("body", "ARRAY['a'::text, 'b'::text]"));
        // A list of the row's own columns is not of the claims.
        assert_eq!(on_messages("(body = ANY (ARRAY[title, 'b'::text]))"), None);
    }

    #[test]
    fn conditions_of_the_claims_alone() {
        let claims = |e: &str| Some(vec![Link::Claims { expression: e.into() }]);
        assert_eq!(on_notes("true"), claims("true"));
        assert_eq!(
            on_notes("(auth.role() = 'authenticated'::text)"),
            claims("auth.role() = 'authenticated'::text")
        );
    }

    #[test]
    fn anything_else_has_no_link() {
        for qual in [
            "((user_id = auth.uid()) OR archived)",
            "((user_id = auth.uid()) AND (archived = false))",
            // The classic mistake: `m.room_id = room_id` compares the member row with itself.
            "(EXISTS ( SELECT 1 FROM members m WHERE ((m.room_id = m.room_id) AND (m.user_id = auth.uid()))))",
            "(EXISTS ( SELECT 1 FROM members m WHERE ((m.room_id = notes.room_id) AND (m.user_id = auth.uid()) AND m.active)))",
            "(EXISTS ( SELECT 1 FROM members m WHERE ((m.room_id = other.room_id) AND (m.user_id = auth.uid()))))",
            "(EXISTS ( SELECT 1 FROM members m WHERE ((m.room_id = notes.room_id) AND (m.user_id = notes.owner))))",
            "(room_id IN ( SELECT m.room_id FROM members m WHERE (m.user_id = lower(auth.uid()::text))))",
            "(user_id = owner_id)",
            "(user_id = lower(auth.uid()::text))",
            "(user_id = ( SELECT members.user_id FROM members LIMIT 1))",
            "(user_id <> auth.uid())",
            "(user_id = my_uid())",
            "archived",
            // A cast to a type that is not a plain name, or a function of the column.
            "((user_id)::text = lower((auth.jwt() ->> 'sub'::text)))",
            "(lower((user_id)::text) = (auth.jwt() ->> 'sub'::text))",
            "((user_id)::text::foo = (auth.jwt() ->> 'sub'::text))",
        ] {
            assert_eq!(on_notes(qual), None, "{qual}");
        }
    }

    /// Printed by `pg_get_expr` (Postgres 15) for policies written as in the comments.
    #[test]
    fn a_cast_column_on_either_side() {
        // user_id::text = (select current_setting('request.jwt.claims', true)::jsonb ->> 'sub')
        assert_eq!(
            on_notes("((user_id)::text = ( SELECT ((current_setting('request.jwt.claims'::text, true))::jsonb ->> 'sub'::text)))"),
            Some(vec![cast_column(
                "user_id",
                "text",
                "( SELECT ((current_setting('request.jwt.claims'::text, true))::jsonb ->> 'sub'::text))"
            )])
        );
        // (auth.jwt() ->> 'sub') = user_id::text
        assert_eq!(
            on_notes("((auth.jwt() ->> 'sub'::text) = (user_id)::text)"),
            Some(vec![cast_column("user_id", "text", "(auth.jwt() ->> 'sub'::text)")])
        );
        // CAST(user_id AS text) = auth.jwt() ->> 'sub'
        assert_eq!(
            on_notes("((user_id)::text = (auth.jwt() ->> 'sub'::text))"),
            Some(vec![cast_column("user_id", "text", "(auth.jwt() ->> 'sub'::text)")])
        );
        // user_id::text = (auth.jwt() -> 'app_metadata' ->> 'org_id')
        assert_eq!(
            on_notes("((user_id)::text = ((auth.jwt() -> 'app_metadata'::text) ->> 'org_id'::text))"),
            Some(vec![cast_column("user_id", "text", "((auth.jwt() -> 'app_metadata'::text) ->> 'org_id'::text)")])
        );
        // owner_text::uuid = auth.uid(): recognised here, refused by the audience (not injective)
        assert_eq!(
            on_notes("((owner_text)::uuid = auth.uid())"),
            Some(vec![cast_column("owner_text", "uuid", "auth.uid()")])
        );
        assert_eq!(
            on_notes("((name)::character varying = (auth.jwt() ->> 'name'::text))"),
            Some(vec![cast_column("name", "character varying", "(auth.jwt() ->> 'name'::text)")])
        );
    }

    #[test]
    fn an_or_of_recognised_parts_is_each_of_them() {
        // auth.uid() = user_id OR team_id = (auth.jwt() ->> 'team')::int
        assert_eq!(
            on_notes("((auth.uid() = user_id) OR (team_id = ((auth.jwt() ->> 'team'::text))::integer))"),
            Some(vec![
                Link::Column { column: "user_id".into(), expression: "auth.uid()".into(), cast: None },
                Link::Column { column: "team_id".into(), expression: "((auth.jwt() ->> 'team'::text))::integer".into(), cast: None },
            ])
        );
        let parts = on_notes(
            "((auth.uid() = user_id) OR (room_id IN ( SELECT m.room_id\n   FROM members m\n  WHERE (m.user_id = auth.uid()))))",
        )
        .expect("both parts are recognised");
        assert!(matches!(&parts[1], Link::Membership { tables, .. } if tables == &["members"]), "{parts:?}");
        // An OR of claims alone: each part a condition of the claims.
        assert_eq!(
            on_notes("((auth.role() = 'service_role'::text) OR (auth.role() = 'admin'::text))"),
            Some(vec![
                Link::Claims { expression: "auth.role() = 'service_role'::text".into() },
                Link::Claims { expression: "auth.role() = 'admin'::text".into() },
            ])
        );
        // One part not recognised: none is.
        assert_eq!(on_notes("((auth.uid() = user_id) OR has_role(auth.uid(), 'admin'::text))"), None);
    }

    #[test]
    fn a_claim_among_an_arrays_elements() {
        // auth.uid() = ANY(participant_ids), printed by Postgres 15
        assert_eq!(
            on_notes("(auth.uid() = ANY (participant_ids))"),
            Some(vec![Link::AnyElement { column: "participant_ids".into(), expression: "auth.uid()".into() }])
        );
        assert_eq!(
            on_notes("(( SELECT auth.uid() AS uid) = ANY (\"Members\"))"),
            Some(vec![Link::AnyElement { column: "Members".into(), expression: "( SELECT auth.uid() AS uid)".into() }])
        );
        assert_eq!(on_notes("(auth.uid() = ANY (lower(ids)))"), None);
    }

    #[test]
    fn advice_names_the_reason_and_a_rewrite() {
        assert!(advice("is_room_participant(room_id)").starts_with("calls is_room_participant()"));
        assert!(advice("((auth.uid() = user_id) OR has_role(auth.uid(), 'admin'::text))").starts_with("calls has_role()"));
        assert!(advice("((user_id = auth.uid()) AND (archived = false))").starts_with("an AND"));
        assert!(advice("(user_id <> auth.uid())").contains("(select auth.uid())"));
    }

    #[test]
    fn types_compared_by_text() {
        assert!(text_equal("uuid") && text_equal("int8") && text_equal("text"));
        for ty in ["numeric", "float8", "citext", "timestamptz", "bool", "bpchar"] {
            assert!(!text_equal(ty), "{ty}");
        }
    }
}
