// A scratch Postgres for programs outside the node tests (`scripts/fuzz filter_pg`): creates a
// cluster in the directory given, prints its URL on the first line of stdout, and stops it when
// stdin closes (the caller exited) or on SIGTERM.
import { resolve } from 'node:path';
import { Postgres } from './postgres.mjs';

const dir = process.argv[2] && resolve(process.argv[2]);
if (!dir) {
  console.error('usage: node tests/stack/scratch_postgres.mjs <directory>');
  process.exit(2);
}
const pg = await Postgres.create({ dir, log: (line) => console.error(line) });
console.log(pg.url);
const stop = async () => {
  await pg.stop();
  process.exit(0);
};
process.stdin.on('end', stop).resume();
process.on('SIGTERM', stop);
