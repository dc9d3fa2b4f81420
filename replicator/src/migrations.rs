//! sluice's own schema in the user's database (`sluice`), created and upgraded by versioned,
//! idempotent migrations. Several replicators may start at once: an advisory lock serializes them.

use tokio_postgres::Client;
use tracing::info;

/// (version, SQL). Append only: an applied migration never changes.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
    -- One row per (channel binding, matched table): what a socket of a hub subscribed to.
    create table sluice.subscriptions (
        id bigserial primary key,
        hub text not null,
        socket text not null,
        topic text not null,
        binding_id bigint not null,
        relid oid not null,
        action text not null check (action in ('*', 'INSERT', 'UPDATE', 'DELETE')),
        filters jsonb not null,
        select_columns text[],
        claims jsonb not null,
        claims_role regrole not null,
        created_at timestamptz not null default now()
    );
    create index subscriptions_relid on sluice.subscriptions (relid);
    create index subscriptions_channel on sluice.subscriptions (hub, socket, topic);

    -- Why `value` cannot be read as `typ`, or null when it can. The value is quoted by format(%L).
    create function sluice.cast_error(value text, typ regtype) returns text
    language plpgsql stable as $$
    begin
        execute format('select %L::%s', value, typ);
        return null;
    exception when others then
        return sqlerrm;
    end $$;
    "#,
    ),
    (
        2,
        r#"
    -- `value` read as `typ` and printed back: the text pgoutput sends for an equal value (in the
    -- session's DateStyle/TimeZone). For an array type, its elements. Filters compare these.
    create function sluice.canonical(value text, typ regtype) returns text[]
    language plpgsql stable as $$
    declare
        result text[];
    begin
        if (select typcategory = 'A' from pg_type where oid = typ) then
            execute format('select array(select x::text from unnest(%L::%s) x)', value, typ) into result;
        else
            execute format('select array[%L::%s::text]', value, typ) into result;
        end if;
        return result;
    end $$;
    "#,
    ),
];

pub async fn run(client: &mut Client) -> Result<(), String> {
    let fail = |e: tokio_postgres::Error| format!("migrating the sluice schema failed: {e}");
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("select pg_advisory_xact_lock(hashtext('sluice.migrations'))", &[])
        .await
        .map_err(fail)?;
    tx.batch_execute(
        "create schema if not exists sluice;
         create table if not exists sluice.migrations (version int primary key, applied_at timestamptz not null default now());",
    )
    .await
    .map_err(fail)?;
    for (version, sql) in MIGRATIONS {
        let applied = tx
            .query_opt("select 1 from sluice.migrations where version = $1", &[version])
            .await
            .map_err(fail)?;
        if applied.is_none() {
            tx.batch_execute(sql).await.map_err(fail)?;
            tx.execute("insert into sluice.migrations (version) values ($1)", &[version])
                .await
                .map_err(fail)?;
            info!("applied sluice schema migration {version}");
        }
    }
    tx.commit().await.map_err(fail)
}
