//! Helper functions in policies (`using (is_room_participant(room_id))`): a `LANGUAGE sql`
//! function whose body is one `SELECT` is put in place of its call, its parameters replaced by
//! the call's arguments, so that the policy can be read as if its condition were written in it
//! (pure; [`read`] fetches the functions from the catalog).
//!
//! - A scalar helper, `select <expression>` (no FROM at its top): the call becomes
//!   `(<expression>)`.
//! - A set-returning helper, `select <column> from …`, called as `col IN (SELECT f(…))`: the
//!   subquery becomes the body.
//!
//! A helper calling helpers is inlined again, a few levels deep. `SECURITY DEFINER` changes
//! nothing here: the shapes read (a column or membership tied to the claims) mean the same as
//! whoever runs them, and what the index finds of a membership is confirmed by Postgres.

use std::collections::HashSet;

use tokio_postgres::Client;

use super::sql::{parts, split_all, text_of, tokens, Token};

/// A `LANGUAGE sql` function as the catalog has it.
#[derive(Clone, Debug, PartialEq)]
pub struct Helper {
    /// The name as the policy (or a calling helper) writes it: `is_member`, `public.is_member`.
    pub name: String,
    /// The parameters' names, in order (`""` for an unnamed one).
    pub params: Vec<String>,
    /// Its body (`prosrc`).
    pub body: String,
    pub set_returning: bool,
    /// The columns of the tables its body reads: a parameter of the same name would be the
    /// column there (in SQL functions the column wins). `None`: a table was not found.
    pub columns: Option<HashSet<String>>,
}

/// How many levels of helpers calling helpers are put in place.
const DEPTH: usize = 4;

/// `qual` (of a policy on `table`) with every call of one of `helpers` put in place, or why a
/// call cannot be: one sentence for the doctor and the log.
pub fn inline(qual: &str, table: &str, helpers: &[Helper]) -> Result<String, String> {
    let mut sql = qual.to_string();
    for _ in 0..=DEPTH {
        let all = tokens(&sql).ok_or("not read (an operator sluice does not parse)")?;
        let Some((at, helper)) = all.windows(2).enumerate().find_map(|(i, pair)| {
            let called = pair[1].text == "(" && !pair[0].quoted;
            called
                .then(|| helpers.iter().find(|h| h.name.eq_ignore_ascii_case(&pair[0].text)))
                .flatten()
                .map(|h| (i, h))
        }) else {
            return Ok(sql);
        };
        let close = closing(&all, at + 1).ok_or("unbalanced parentheses")?;
        let args: Vec<&[Token]> = match &all[at + 2..close] {
            [] => vec![],
            inner => split_all(inner, ","),
        };
        if args.len() != helper.params.len() {
            return Err(format!("calls {}() with arguments sluice cannot match to its parameters", helper.name));
        }
        // Inside a subquery a bare name may be the subquery's column: only a call outside any
        // (the policy's own condition) has its bare arguments read as the table's columns.
        let top = !inside_subquery(&all[..at]);
        let args: Vec<String> = args
            .iter()
            .map(|a| argument(&sql, a, table, top))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("calls {}() inside a subquery with a column whose table sluice cannot tell", helper.name))?;
        let body = substituted(helper, &args)?;
        let (start, end, text) = if helper.set_returning {
            // `( SELECT f(…) AS f )`: the whole subquery becomes the body.
            let word = |i: usize, w: &str| all.get(i).is_some_and(|t| !t.quoted && t.text.eq_ignore_ascii_case(w));
            let open = at.checked_sub(2).filter(|&o| all[o].text == "(" && word(o + 1, "select"));
            let after = if word(close + 1, "as") { close + 3 } else { close + 1 };
            match (open, all.get(after)) {
                (Some(open), Some(end)) if end.text == ")" => (all[open].start, end.start + 1, format!("({body})")),
                _ => {
                    return Err(format!(
                        "calls the set-returning {}() other than as `column in (select {}(…))`",
                        helper.name, helper.name
                    ))
                }
            }
        } else {
            let expression = scalar(&body).ok_or_else(|| {
                format!(
                    "calls {}(), whose body is not one `select <condition>` (write it as `select exists (select 1 from … where …)`)",
                    helper.name
                )
            })?;
            (all[at].start, all[close].start + 1, format!("({expression})"))
        };
        sql.replace_range(start..end, &text);
    }
    Err(format!("helper functions call each other more than {DEPTH} levels deep"))
}

/// `qual` (a policy's, on `table`) with the helper functions it calls put in place, each read
/// from the catalog by the name it is called with (as this connection's search_path resolves
/// it). `Err` says why one cannot be.
pub async fn inlined(conn: &Client, qual: &str, table: &str) -> Result<Result<String, String>, tokio_postgres::Error> {
    let mut helpers = Vec::new();
    let mut tried = HashSet::new();
    loop {
        let sql = match inline(qual, table, &helpers) {
            Ok(sql) => sql,
            Err(why) => return Ok(Err(why)),
        };
        let new: Vec<String> = calls(&sql).into_iter().filter(|n| tried.insert(n.to_ascii_lowercase())).collect();
        if new.is_empty() || tried.len() > 4 * DEPTH {
            return Ok(Ok(sql));
        }
        for name in new {
            match read(conn, &name).await? {
                Some(Ok(helper)) => helpers.push(helper),
                Some(Err(why)) => return Ok(Err(why)),
                None => {} // no such function here: the shapes decide
            }
        }
    }
}

/// The function `name` as a [`Helper`], or why it is not one (`None`: no single function of
/// that name outside Postgres's own).
async fn read(conn: &Client, name: &str) -> Result<Option<Result<Helper, String>>, tokio_postgres::Error> {
    let row = conn
        .query_opt(
            "select l.lanname::text, p.prokind::text, p.prosrc, coalesce(p.proargnames, '{}')::text[], p.pronargs::int4,
                    p.proretset, p.proargmodes is not null
             from pg_proc p join pg_language l on l.oid = p.prolang
             where p.oid = to_regproc($1) and p.pronamespace <> 'pg_catalog'::regnamespace",
            &[&name],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (language, kind, body): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let (mut params, count, set_returning, modes): (Vec<String>, i32, bool, bool) = (row.get(3), row.get(4), row.get(5), row.get(6));
    if language != "sql" || kind != "f" {
        return Ok(Some(Err(format!(
            "calls {name}(), written in {language}: only LANGUAGE sql helpers of one SELECT are read; write it in SQL (`select exists (select 1 from … where … = auth.uid())`)"
        ))));
    }
    if body.trim().is_empty() || modes {
        return Ok(Some(Err(format!(
            "calls {name}(), whose body (BEGIN ATOMIC) or parameters (OUT) sluice does not read; write it `as $$ select … $$`"
        ))));
    }
    params.resize(count.max(0) as usize, String::new());
    let mut columns = Some(HashSet::new());
    for table in tables_read(&body) {
        let found = conn
            .query_one(
                "select to_regclass($1) is not null,
                        array(select attname::text from pg_attribute where attrelid = to_regclass($1) and attnum > 0 and not attisdropped)",
                &[&table],
            )
            .await?;
        match (found.get::<_, bool>(0), columns.as_mut()) {
            (true, Some(columns)) => columns.extend(found.get::<_, Vec<String>>(1)),
            _ => columns = None,
        }
    }
    Ok(Some(Ok(Helper {
        name: name.to_string(),
        params,
        body,
        set_returning,
        columns,
    })))
}

/// The functions `sql` calls that may be helpers: not Supabase's claims helpers, not SQL words.
pub fn calls(sql: &str) -> Vec<String> {
    let Some(all) = tokens(sql) else {
        return vec![];
    };
    let mut names: Vec<String> = all
        .windows(2)
        .filter(|pair| pair[1].text == "(" && is_function_name(&pair[0]))
        .map(|pair| pair[0].text.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether `token`, before a parenthesis, names a function sluice does not know already.
pub(super) fn is_function_name(token: &Token) -> bool {
    let name = token.text.to_ascii_lowercase();
    (token.quoted || name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        && !super::policies::CLAIMS_FUNCTIONS.contains(&name.as_str())
        && !super::policies::SQL_WORDS.contains(&name.as_str())
}

/// The tables a body reads: the names after FROM and JOIN, as written.
pub fn tables_read(body: &str) -> Vec<String> {
    let Some(all) = tokens(body) else {
        return vec![];
    };
    all.windows(2)
        .filter(|pair| {
            let w = pair[0].text.to_ascii_lowercase();
            !pair[0].quoted && (w == "from" || w == "join") && pair[1].text != "("
        })
        .map(|pair| pair[1].text.clone())
        .collect()
}

/// The index of the parenthesis closing the one at `open`.
fn closing(all: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, t) in all.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether the tokens before a call leave a subquery's parenthesis open.
fn inside_subquery(before: &[Token]) -> bool {
    let mut open: Vec<bool> = Vec::new(); // per open parenthesis: does a SELECT follow it
    for (i, t) in before.iter().enumerate() {
        match t.text.as_str() {
            "(" => open.push(before.get(i + 1).is_some_and(|n| !n.quoted && n.text.eq_ignore_ascii_case("select"))),
            ")" => {
                open.pop();
            }
            _ => {}
        }
    }
    open.contains(&true)
}

/// An argument's text as it is put in place: a column of the policy's table qualified by the
/// table's name (inside the helper's subquery a bare name would be the subquery's), anything
/// else in parentheses.
fn argument(sql: &str, arg: &[Token], table: &str, top: bool) -> Option<String> {
    if let [t] = arg {
        if let Some([column]) = parts(t).as_deref() {
            let is_name = !t.text.starts_with('$') && !matches!(column.as_str(), "true" | "false" | "null");
            if is_name {
                return top.then(|| format!("{}.{}", quote(table), quote(column)));
            }
        }
    }
    Some(format!("({})", text_of(sql, arg)?))
}

/// An identifier as SQL reads it back.
fn quote(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The helper's body (one SELECT) with its parameters replaced by `args`.
fn substituted(helper: &Helper, args: &[String]) -> Result<String, String> {
    let name = &helper.name;
    let body = helper.body.trim().trim_end_matches(';').trim_end();
    let all = tokens(body).ok_or_else(|| format!("calls {name}(), whose body sluice does not parse (one SELECT of the shapes it indexes is)"))?;
    let starts_with_select = all.first().is_some_and(|t| !t.quoted && t.text.eq_ignore_ascii_case("select"));
    if !starts_with_select || all.iter().any(|t| t.text == ";") {
        return Err(format!("calls {name}(), whose body is not one SELECT"));
    }
    let short = name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase();
    let mut out = String::new();
    let mut copied = 0;
    for (i, token) in all.iter().enumerate() {
        let param = if let Some(n) = token.text.strip_prefix('$') {
            let n: usize = n.parse().map_err(|_| format!("calls {name}() with a parameter it does not have"))?;
            Some(n.checked_sub(1).filter(|&n| n < args.len()).ok_or_else(|| format!("{name}() reads ${n}, which it does not have"))?)
        } else if token.quoted || all.get(i + 1).is_some_and(|t| t.text == "(") {
            None
        } else {
            let lower = token.text.to_ascii_lowercase();
            let bare = lower.strip_prefix(&format!("{short}.")).unwrap_or(&lower);
            let named = helper.params.iter().position(|p| !p.is_empty() && p.eq_ignore_ascii_case(bare));
            let qualified = bare.len() != lower.len();
            match (&helper.columns, named) {
                // In a SQL function a column of that name wins over the parameter.
                (Some(columns), Some(_)) if !qualified && columns.contains(bare) => None,
                (None, Some(_)) if !qualified => {
                    return Err(format!("calls {name}(), which reads a table sluice could not find"));
                }
                // Right after a name (`from members r`) it is an alias, not the parameter.
                (_, Some(_)) if !qualified && is_alias_position(&all, i) => {
                    return Err(format!("{name}(): {bare} is both a parameter and an alias"));
                }
                _ => named,
            }
        };
        if let Some(p) = param {
            out.push_str(&body[copied..token.start]);
            out.push_str(&args[p]);
            copied = token.start + token.text.len();
        }
    }
    out.push_str(&body[copied..]);
    Ok(out)
}

/// Whether the token at `i` follows a name (not a keyword): where SQL puts an alias.
fn is_alias_position(all: &[Token], i: usize) -> bool {
    i.checked_sub(1).is_some_and(|p| {
        let previous = all[p].text.to_ascii_lowercase();
        previous.starts_with(|c: char| c.is_ascii_alphabetic())
            && !super::policies::SQL_WORDS.contains(&previous.as_str())
            && !matches!(previous.as_str(), "by" | "is" | "like" | "between")
    })
}

/// `select <expression>` with nothing at its top after the expression (no FROM, WHERE, …):
/// the expression.
fn scalar(body: &str) -> Option<String> {
    let all = tokens(body)?;
    let mut depth = 0i32;
    for t in &all[1..] {
        match t.text.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            w if depth == 0 && !t.quoted && TOP_WORDS.contains(&w.to_ascii_lowercase().as_str()) => return None,
            _ => {}
        }
    }
    text_of(body, &all[1..])
}

/// Words after which a SELECT is more than one expression.
const TOP_WORDS: [&str; 9] = ["from", "where", "group", "having", "limit", "offset", "union", "order", "into"];

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(name: &str, params: &[&str], body: &str, columns: &[&str]) -> Helper {
        Helper {
            name: name.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
            body: body.into(),
            set_returning: false,
            columns: Some(columns.iter().map(|c| c.to_string()).collect()),
        }
    }

    /// Bodies as `prosrc` keeps them (as written), policies as `pg_get_expr` prints them
    /// (Postgres 15).
    #[test]
    fn a_membership_helper_is_put_in_place_with_the_column_qualified() {
        let participant = helper(
            "is_room_participant",
            &["_room_id"],
            "\n  select exists (select 1 from room_participants where room_id = _room_id and user_id = auth.uid());\n",
            &["room_id", "user_id", "role"],
        );
        assert_eq!(
            inline("is_room_participant(room_id)", "messages", std::slice::from_ref(&participant)).unwrap(),
            "(exists (select 1 from room_participants where room_id = messages.room_id and user_id = auth.uid()))"
        );
        // By number, and with the argument another expression.
        let has_role = helper(
            "has_role",
            &["uid", "r"],
            " select exists (select 1 from public.user_roles ur where ur.user_id = $1 and ur.role = $2) ",
            &["user_id", "role"],
        );
        assert_eq!(
            inline("((auth.uid() = user_id) OR has_role(auth.uid(), 'admin'::text))", "messages", &[has_role.clone()]).unwrap(),
            "((auth.uid() = user_id) OR (exists (select 1 from public.user_roles ur where ur.user_id = (auth.uid()) and ur.role = ('admin'::text))))"
        );
        // A helper calling a helper.
        let is_admin = helper("is_admin", &[], "select has_role(auth.uid(), 'admin')", &[]);
        assert_eq!(
            inline("(is_room_participant(room_id) OR is_admin())", "messages", &[participant, has_role, is_admin]).unwrap(),
            "((exists (select 1 from room_participants where room_id = messages.room_id and user_id = auth.uid())) OR ((exists (select 1 from public.user_roles ur where ur.user_id = (auth.uid()) and ur.role = ('admin')))))"
        );
    }

    #[test]
    fn a_set_returning_helper_becomes_the_subquery() {
        let rooms = Helper {
            set_returning: true,
            ..helper(
                "get_rooms",
                &["r"],
                " select room_id from room_participants where user_id = auth.uid() and role = r ",
                &["room_id", "user_id", "role"],
            )
        };
        assert_eq!(
            inline("(room_id IN ( SELECT get_rooms('member'::text) AS get_rooms))", "messages", std::slice::from_ref(&rooms)).unwrap(),
            "(room_id IN (select room_id from room_participants where user_id = auth.uid() and role = ('member'::text)))"
        );
        assert!(inline("(get_rooms('x'::text) IS NOT NULL)", "messages", &[rooms]).is_err());
    }

    #[test]
    fn what_cannot_be_put_in_place_says_why() {
        // The parameter has the name of a column of the table read: the column wins in SQL.
        let shadowed = helper(
            "is_member",
            &["room_id"],
            "select exists (select 1 from members where room_id = room_id and user_id = auth.uid())",
            &["room_id", "user_id"],
        );
        let inlined = inline("is_member(room_id)", "messages", &[shadowed.clone()]).unwrap();
        assert_eq!(inlined, "(exists (select 1 from members where room_id = room_id and user_id = auth.uid()))");
        assert_eq!(super::super::policies::links(&inlined, "messages"), None);
        // Qualified by the function's name it is the parameter.
        let qualified = Helper {
            body: "select exists (select 1 from members where room_id = is_member.room_id and user_id = auth.uid())".into(),
            ..shadowed
        };
        assert_eq!(
            inline("is_member(room_id)", "messages", &[qualified]).unwrap(),
            "(exists (select 1 from members where room_id = messages.room_id and user_id = auth.uid()))"
        );
        for body in ["select 1; select 2", "select true from members", "update t set x = 1", "select $2"] {
            let bad = helper("f", &["a"], body, &[]);
            assert!(inline("f(room_id)", "messages", &[bad]).is_err(), "{body}");
        }
        // Called inside a subquery with a bare name: whose column it is cannot be told.
        let is_admin = helper("is_team_admin", &["t"], "select exists (select 1 from admins a where a.team = t and a.user_id = auth.uid())", &["team", "user_id"]);
        let nested = helper("f", &["r"], "select exists (select 1 from rooms where id = r and is_team_admin(team))", &["id", "team"]);
        assert!(inline("f(room_id)", "messages", &[nested, is_admin.clone()]).is_err());
        assert!(inline("(EXISTS ( SELECT 1 FROM rooms r WHERE is_team_admin(r.team)))", "messages", &[is_admin]).is_ok());
        // Not a helper: left as it is.
        assert_eq!(inline("lower(body)", "messages", &[]).unwrap(), "lower(body)");
    }

    #[test]
    fn calls_and_tables_read() {
        assert_eq!(calls("((auth.uid() = user_id) OR has_role(auth.uid(), 'admin'::text))"), vec!["has_role"]);
        assert_eq!(calls("(is_room_participant(room_id) OR public.is_admin())"), vec!["is_room_participant", "public.is_admin"]);
        assert!(calls("(EXISTS ( SELECT 1 FROM m WHERE (m.a = ANY (x))))").is_empty());
        assert_eq!(
            tables_read("select exists (select 1 from public.members m join rooms r on r.id = m.room_id)"),
            vec!["public.members", "rooms"]
        );
    }
}
