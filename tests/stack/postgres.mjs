// A throwaway Postgres cluster with wal_level=logical: initdb into a folder, run on a free port
// with its Unix socket in that folder, stop and remove on request. `managed: true` configures it
// as managed databases are: TLS with a certificate of a test CA, and TCP accepted only over TLS.
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import pg from 'pg';
import { freePort, startProcess } from './process.mjs';
import { makeCertificates } from './tls.mjs';

/** The folder holding initdb/postgres: PG_BINDIR, else the newest /usr/lib/postgresql/N/bin. */
export function postgresBinDir() {
  if (process.env.PG_BINDIR) return process.env.PG_BINDIR;
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => b - a) : [];
  const found = versions.map((v) => join(root, v, 'bin')).find((bin) => existsSync(join(bin, 'initdb')));
  if (!found) throw new Error('Postgres binaries not found: run scripts/bootstrap (it installs them with apt) or set PG_BINDIR');
  return found;
}

/** Postgres refuses to run as root: when we are root, it runs as the `postgres` system user. */
function postgresUser() {
  if (process.getuid?.() !== 0) return {};
  const id = (flag) => Number(execFileSync('id', [flag, 'postgres']).toString().trim());
  return { uid: id('-u'), gid: id('-g') };
}

/** Whether `user` ({uid, gid}) can enter the nearest existing folder at or above `dir`. */
function canEnter(user, dir) {
  let existing = dir;
  while (!existsSync(existing)) existing = dirname(existing);
  try {
    execFileSync('/bin/sh', ['-c', 'cd "$1"', 'sh', existing], { stdio: 'ignore', ...user });
    return true;
  } catch {
    return false;
  }
}

export class Postgres {
  /**
   * Creates a cluster in `dir` (wiped first) and starts it; resolves once it accepts connections.
   * When the `postgres` user cannot reach `dir` (a checkout in a private folder), the cluster goes
   * to a fresh folder under the system's temp folder instead.
   */
  static async create({ dir, port, settings = {}, managed = false, log = () => {} }) {
    const user = postgresUser();
    if (user.uid !== undefined && !canEnter(user, dir)) {
      const fallback = mkdtempSync(join(tmpdir(), 'sluice-pg-'));
      log(`the postgres user cannot reach ${dir}; using ${fallback}`);
      dir = fallback;
    }
    const pg = new Postgres(dir, port ?? (await freePort()), log, settings);
    pg.log(`creating a Postgres cluster in ${pg.data}${managed ? ' (TLS only, like a managed database)' : ''}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    if (pg.user.uid !== undefined) chownSync(dir, pg.user.uid, pg.user.gid);
    execFileSync(join(pg.bin, 'initdb'), ['-D', pg.data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      cwd: dir,
      ...pg.user,
    });
    if (managed) pg.requireTls();
    await pg.start();
    return pg;
  }

  /**
   * TLS as managed databases have it: a server certificate for localhost and 127.0.0.1 signed by a
   * CA made here (`this.ca`; `this.otherCa` is a CA that did not sign it), and pg_hba.conf
   * accepting TCP only over TLS (passwords by SCRAM; the superuser also over the Unix socket).
   */
  requireTls() {
    const tls = makeCertificates(join(this.dir, 'tls'));
    for (const file of [tls.key, tls.cert]) {
      if (this.user.uid !== undefined) chownSync(file, this.user.uid, this.user.gid);
    }
    execFileSync('chmod', ['600', tls.key]);
    writeFileSync(join(this.data, 'pg_hba.conf'), [
      'local all all trust',
      'hostssl all postgres 127.0.0.1/32 trust',
      'hostssl all all 127.0.0.1/32 scram-sha-256',
      'hostssl replication all 127.0.0.1/32 scram-sha-256',
      '',
    ].join('\n'));
    Object.assign(this.settings, { ssl: 'on', ssl_cert_file: tls.cert, ssl_key_file: tls.key });
    this.ca = tls.ca;
    this.otherCa = tls.otherCa;
    this.ssl = { ca: readFileSync(this.ca, 'utf8') };
  }

  /** Settings for a node-postgres client connecting as the superuser. */
  clientConfig() {
    return { connectionString: this.url, ...(this.ssl ? { ssl: this.ssl } : {}) };
  }

  /**
   * Creates the roles that do not exist yet (NOLOGIN, as an app's API roles) and lets the
   * replicator's role, if it is not the superuser, become them, as an administrator would.
   */
  async createRoles(...names) {
    for (const name of names) {
      if (!/^[a-z_]+$/.test(name)) throw new Error(`not a test role name: ${name}`);
      await this.sql(`do $$ begin if not exists (select from pg_roles where rolname = '${name}') then create role ${name} nologin; end if; end $$`);
      if (this.replicatorRole) await this.sql(`grant ${name} to ${this.replicatorRole}`);
    }
  }

  /** `settings`: extra server settings, e.g. `{ wal_level: 'replica' }`. */
  constructor(dir, port, log, settings = {}) {
    Object.assign(this, { dir, port, log, settings, bin: postgresBinDir(), user: postgresUser(), server: null });
    this.data = join(dir, 'data');
    /** Superuser connection over TCP. */
    this.url = `postgres://postgres@127.0.0.1:${port}/postgres`;
    /** What the replicator connects with: the superuser, unless a role was prepared for it
     *  (`prepareReplicatorRole` in replicator.mjs sets this and `replicatorRole`). */
    this.replicatorUrl = this.url;
  }

  async start() {
    const args = ['-D', this.data, '-p', String(this.port), '-k', this.dir, '-c', 'listen_addresses=127.0.0.1',
      '-c', 'wal_level=logical', '-c', 'max_wal_senders=20', '-c', 'max_replication_slots=20',
      '-c', 'fsync=off', '-c', 'full_page_writes=off',
      ...Object.entries(this.settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])];
    let ready;
    const readyLine = new Promise((resolve) => (ready = resolve));
    this.server = startProcess('postgres', join(this.bin, 'postgres'), args, {
      cwd: this.dir,
      ...this.user,
      onLine: (line) => line.includes('database system is ready to accept connections') && ready(),
    });
    const server = this.server;
    const died = server.exited.then(({ code }) => {
      throw new Error(`Postgres exited (code ${code}) before it was ready:\n${server.lines.slice(-10).join('\n')}`);
    });
    await Promise.race([readyLine, died]);
    this.log(`Postgres is ready on 127.0.0.1:${this.port} (wal_level=logical)`);
  }

  /** Runs SQL as the superuser (in `database`, default `postgres`); resolves with the rows. */
  async sql(text, params = [], database) {
    const config = this.clientConfig();
    if (database) {
      const url = new URL(config.connectionString);
      url.pathname = `/${database}`;
      config.connectionString = url.toString();
    }
    const client = new pg.Client(config);
    await client.connect();
    try {
      return (await client.query(text, params)).rows;
    } finally {
      await client.end();
    }
  }

  /** Fast shutdown: disconnects clients, then stops. Walsenders wait for their clients to confirm,
   *  so allow time before resorting to SIGKILL (which would leave backends holding the cluster). */
  async stop() {
    await this.server?.stop('SIGINT', 30_000);
  }

  /** Stops the server and starts it again on the same port: a fast shutdown, or with
   *  `immediate` a crash-like one (SIGQUIT: no checkpoint, recovery from the WAL at start). */
  async restart({ immediate = false } = {}) {
    await (immediate ? this.server?.stop('SIGQUIT', 30_000) : this.stop());
    await this.start();
  }

  /** Stops the server and deletes the cluster. */
  async destroy() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
