// The fault matrix, short version (bench/faults.mjs runs the long one): under a steady mixed load
// every fault of tests/faults/matrix.mjs, once or a few times, must leave each subscriber that
// stayed connected with every change once and in order, and presence whole.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runMatrix, table } from '../faults/matrix.mjs';

test('the short fault matrix: nothing lost, nothing twice, nothing out of order', { timeout: 15 * 60_000 }, async () => {
  const rows = await runMatrix({ short: true, log: process.env.SLUICE_TEST_LOG ? console.error : () => {} });
  console.log(table(rows));
  assert.ok(rows.length >= 17, `${rows.length} faults ran`);
  for (const row of rows) {
    assert.ok(row.ok, `${row.fault}: ${JSON.stringify(row)}`);
  }
});
