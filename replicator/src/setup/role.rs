//! Least privilege: the SQL an administrator runs once so that the replicator works as an
//! ordinary role (`sluice-replicator setup-sql` prints it). What the replicator does with each
//! grant:
//!
//! - `LOGIN REPLICATION`: it connects and streams from its slot (creating and dropping the slot
//!   needs nothing more);
//! - `CREATE` on the database: it creates and owns its `sluice` schema, Supabase's `realtime`
//!   schema where the database has none, and the `sluice_messages` publication of
//!   `realtime.messages`;
//! - membership in the API roles (`anon`, `authenticated`, `service_role`), as Supabase's
//!   `authenticator` has: RLS checks run as the subscriber's role, set per check. The role is
//!   `NOINHERIT`, so these memberships lend it none of their privileges; it needs no grant on
//!   the published tables, which it never reads as itself.
//!
//! The publication of the tables to stream belongs to the administrator: adding a table to it
//! takes the table's ownership, which the replicator has no reason to hold.

/// Names are double-quoted, the password single-quoted, with their quotes doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The API roles RLS is checked as: Supabase's, created where missing.
const API_ROLES: [(&str, &str); 3] = [
    ("anon", "NOLOGIN NOINHERIT"),
    ("authenticated", "NOLOGIN NOINHERIT"),
    ("service_role", "NOLOGIN NOINHERIT BYPASSRLS"),
];

/// The set-up for `role` (with `password`, if one is given) in `database`, streaming
/// `publication`.
pub fn setup_sql(role: &str, password: Option<&str>, database: &str, publication: &str) -> String {
    let r = ident(role);
    let password = match password {
        Some(p) => format!(" PASSWORD {}", literal(p)),
        None => String::new(),
    };
    let create_roles: String = API_ROLES
        .iter()
        .map(|(name, attributes)| {
            format!(
                "    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN CREATE ROLE {} {attributes}; END IF;\n",
                literal(name),
                ident(name)
            )
        })
        .collect();
    let api_roles = API_ROLES
        .iter()
        .map(|(name, _)| ident(name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "-- sluice: run once in database {db}, as a superuser or your provider's admin role.\n\
         \n\
         -- The role the replicator connects as: it logs in and streams (REPLICATION). NOINHERIT:\n\
         -- the roles it becomes for RLS checks lend it none of their privileges.\n\
         CREATE ROLE {r} WITH LOGIN REPLICATION NOINHERIT{password};\n\
         \n\
         -- Its own schema (sluice), Supabase's realtime schema where the database has none, and\n\
         -- the publication of realtime.messages: created by the replicator, owned by it.\n\
         GRANT CREATE ON DATABASE {db} TO {r};\n\
         \n\
         -- The roles subscribers' rows are RLS-checked as (Supabase's API roles, created where\n\
         -- missing). Grant any other role your tokens carry the same way: GRANT <role> TO {r};\n\
         DO $$\n\
         BEGIN\n\
         {create_roles}\
         END $$;\n\
         GRANT {api_roles} TO {r};\n\
         \n\
         -- The publication of the tables to stream, owned by you. Add tables as their owner:\n\
         --   ALTER PUBLICATION {p} ADD TABLE public.your_table;\n\
         DO $$\n\
         BEGIN\n\
         \x20   IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = {pl}) THEN CREATE PUBLICATION {p}; END IF;\n\
         END $$;\n",
        db = ident(database),
        p = ident(publication),
        pl = literal(publication),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_password_are_quoted() {
        let sql = setup_sql("we\"ird", Some("it's"), "app", "supabase_realtime");
        assert!(
            sql.contains("CREATE ROLE \"we\"\"ird\" WITH LOGIN REPLICATION NOINHERIT PASSWORD 'it''s';"),
            "{sql}"
        );
        assert!(
            sql.contains("GRANT CREATE ON DATABASE \"app\" TO \"we\"\"ird\";"),
            "{sql}"
        );
        assert!(sql.contains("GRANT \"anon\", \"authenticated\", \"service_role\" TO \"we\"\"ird\";"));
        assert!(sql.contains("CREATE PUBLICATION \"supabase_realtime\"; END IF;"));
        assert!(!setup_sql("r", None, "app", "p").contains("PASSWORD"));
    }
}
