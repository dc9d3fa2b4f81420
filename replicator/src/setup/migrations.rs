//! sluice's own schema in the user's database (`sluice`), created and upgraded by versioned,
//! idempotent migrations. Several replicators may start at once: an advisory lock serializes them.

use tokio_postgres::Client;
use tracing::info;

use crate::error::StartError;

/// (version, SQL). Append only: an applied migration never changes what it did where it applied
/// (migration 3 later learnt to leave a `realtime` schema it does not own alone, which only changes
/// its outcome where it used to fail).
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
    (
        3,
        r#"
    -- Supabase's `realtime` schema for Broadcast from the database (docs/protocol.md 5.4), created only
    -- where absent: a Supabase database keeps its own. Upstream's signatures and behaviour.
    do $do$
    begin
        -- Catalog lookups, not to_regclass: that needs USAGE on a schema that may not be ours.
        if not exists (select from pg_class c join pg_namespace n on n.oid = c.relnamespace
                       where n.nspname = 'realtime' and c.relname = 'messages') then
            create schema if not exists realtime;
            create table realtime.messages (
                topic text not null,
                extension text not null,
                payload jsonb,
                event text,
                private boolean default false,
                updated_at timestamp without time zone not null default now(),
                inserted_at timestamp without time zone not null default now(),
                id uuid not null default gen_random_uuid(),
                binary_payload bytea,
                primary key (id, inserted_at),
                constraint messages_payload_exclusive check (payload is null or binary_payload is null)
            ) partition by range (inserted_at);
            alter table realtime.messages enable row level security;
        end if;
        -- The rest only where the schema is ours: a Supabase database's `realtime` belongs to its
        -- own Realtime, which keeps the functions and grants there.
        if not pg_has_role((select nspowner from pg_namespace where nspname = 'realtime'), 'USAGE') then
            return;
        end if;
        if to_regprocedure('realtime.topic()') is null then
            create function realtime.topic() returns text language sql stable
            as $f$ select nullif(current_setting('realtime.topic', true), '')::text $f$;
        end if;
        if to_regprocedure('realtime.send(jsonb, text, text, boolean)') is null then
            create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
            returns void language plpgsql as $f$
            declare
                new_id uuid := gen_random_uuid();
            begin
                begin
                    perform set_config('realtime.topic', topic, true);
                    insert into realtime.messages (id, payload, event, topic, private, extension)
                    values (new_id,
                            case when payload ? 'id' then payload else payload || jsonb_build_object('id', new_id) end,
                            event, topic, private, 'broadcast');
                exception when others then
                    raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
                end;
            end $f$;
        end if;
        if to_regprocedure('realtime.send_binary(bytea, text, text, boolean)') is null then
            create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
            returns void language plpgsql as $f$
            begin
                begin
                    perform set_config('realtime.topic', topic, true);
                    insert into realtime.messages (binary_payload, event, topic, private, extension)
                    values (payload, event, topic, private, 'broadcast');
                exception when others then
                    raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
                end;
            end $f$;
        end if;
        if to_regprocedure('realtime.broadcast_changes(text, text, text, text, text, record, record, text)') is null then
            create function realtime.broadcast_changes(topic_name text, event_name text, operation text,
                table_name text, table_schema text, new record, old record, level text default 'ROW')
            returns void language plpgsql as $f$
            begin
                if level = 'STATEMENT' then
                    raise exception 'function can only be triggered for each row, not for each statement';
                end if;
                perform realtime.send(
                    jsonb_build_object('old_record', case when old is null then null else to_jsonb(old) end,
                                       'record', case when new is null then null else to_jsonb(new) end,
                                       'operation', operation, 'table', table_name, 'schema', table_schema),
                    event_name, topic_name, true);
            end $f$;
        end if;
        -- Supabase's API roles, where they exist, may send and (as policies allow) read.
        if exists (select 1 from pg_roles where rolname = 'anon') then
            grant usage on schema realtime to anon;
            grant select, insert, update on realtime.messages to anon;
        end if;
        if exists (select 1 from pg_roles where rolname = 'authenticated') then
            grant usage on schema realtime to authenticated;
            grant select, insert, update on realtime.messages to authenticated;
        end if;
        if exists (select 1 from pg_roles where rolname = 'service_role') then
            grant usage on schema realtime to service_role;
            grant select, insert, update on realtime.messages to service_role;
        end if;
    end $do$;

    -- Daily partitions of realtime.messages: yesterday to three days ahead; older than 72 h dropped.
    -- Run at start and hourly by the replicator.
    create function sluice.maintain_message_partitions() returns void language plpgsql as $$
    declare
        day date;
        old record;
    begin
        -- Partitions are the owner's to make: a Supabase database's own Realtime makes them there.
        if not pg_has_role((select c.relowner from pg_class c join pg_namespace n on n.oid = c.relnamespace
                            where n.nspname = 'realtime' and c.relname = 'messages'), 'USAGE') then
            return;
        end if;
        for day in select generate_series(current_date - 1, current_date + 3, interval '1 day')::date loop
            execute format('create table if not exists realtime.%I partition of realtime.messages for values from (%L) to (%L)',
                           'messages_' || to_char(day, 'YYYY_MM_DD'), day, day + 1);
        end loop;
        for old in
            select c.relname from pg_inherits i
            join pg_class c on c.oid = i.inhrelid
            where i.inhparent = 'realtime.messages'::regclass
              and c.relname ~ '^messages_\d{4}_\d{2}_\d{2}$'
              and to_date(substr(c.relname, 10), 'YYYY_MM_DD') + 1 < now() - interval '72 hours'
        loop
            execute format('drop table realtime.%I', old.relname);
        end loop;
    end $$;
    select sluice.maintain_message_partitions();

    -- The messages are streamed through a publication of their own, as the partitioned root.
    do $do$
    begin
        if exists (select 1 from pg_publication where pubname = 'sluice_messages') then
            return;
        end if;
        -- Publishing a table takes its ownership: where realtime.messages is someone else's, its
        -- owner creates the publication (the replicator says so at start).
        if pg_has_role((select c.relowner from pg_class c join pg_namespace n on n.oid = c.relnamespace
                            where n.nspname = 'realtime' and c.relname = 'messages'), 'USAGE') then
            create publication sluice_messages for table realtime.messages with (publish_via_partition_root = true);
        end if;
    end $do$;
    "#,
    ),
    (
        4,
        r#"
    -- A wildcard binding (schema-wide or `*`) as the client sent it: tables published after the
    -- channel joined are matched against it (`subscriptions::publication`). Null for others.
    alter table sluice.subscriptions add column binding jsonb;
    "#,
    ),
    (
        5,
        r#"
    -- Gaps in the stream: each time the slot was recreated to protect the disk
    -- (`source::slot`). The channels subscribed then (id <= last_subscription) are told changes
    -- were lost; the row goes once they all were.
    create table sluice.slot_resets (
        id bigserial primary key,
        at timestamptz not null default now(),
        reason text not null,
        last_subscription bigint not null
    );
    "#,
    ),
];

pub async fn run(client: &mut Client) -> Result<(), StartError> {
    let fail = |e: tokio_postgres::Error| {
        StartError(format!(
            "MigrationsFailedToRun: migrating the sluice schema failed: {}",
            crate::db::error_text(&e)
        ))
    };
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
