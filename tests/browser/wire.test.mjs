// The inspector's protocol module (gateway-worker/inspector/wire.js), pure: frames of both
// protocol versions, V2's binary broadcast, the filter check, presence sync.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode, encode, filterProblem, presenceAfter } from '../../gateway-worker/inspector/wire.js';

const join = { join_ref: '1', ref: '1', topic: 'realtime:room', event: 'phx_join', payload: { config: {} } };

test('frames as vsn 1.0.0 objects and 2.0.0 arrays, both ways', () => {
  assert.deepEqual(JSON.parse(encode('1.0.0', join)), { topic: 'realtime:room', event: 'phx_join', payload: { config: {} }, ref: '1', join_ref: '1' });
  assert.deepEqual(JSON.parse(encode('2.0.0', join)), ['1', '1', 'realtime:room', 'phx_join', { config: {} }]);
  for (const vsn of ['1.0.0', '2.0.0']) assert.deepEqual(decode(vsn, encode(vsn, join)), join);
});

test('a V2 binary user broadcast (kind 4) decodes as realtime-js decodes it', () => {
  const enc = new TextEncoder();
  const [topic, event, meta, payload] = ['realtime:room', 'cursor', '{"id":"x"}', '{"x":1}'].map((s) => enc.encode(s));
  const frame = new Uint8Array([4, topic.length, event.length, meta.length, 1, ...topic, ...event, ...meta, ...payload]);
  assert.deepEqual(decode('2.0.0', frame.buffer), {
    join_ref: null, ref: null, topic: 'realtime:room', event: 'broadcast',
    payload: { type: 'broadcast', event: 'cursor', payload: { x: 1 }, meta: { id: 'x' } },
  });
  assert.equal(decode('2.0.0', new Uint8Array([3, 0, 0, 0, 0]).buffer), null, 'kind 3 is not sent to clients');
});

test('filters as upstream writes them pass; others are refused in words', () => {
  for (const ok of ['', 'id=eq.1', 'name=like.a%', 'id=in.(1,2,3)', 'body=not.is.null', 'id=gt.1,name=eq."a,b"', 'tags=imatch.^x']) {
    assert.equal(filterProblem(ok), null, ok);
  }
  assert.match(filterProblem('id=equals.1'), /not column=operator\.value/);
  assert.match(filterProblem('id'), /not column=operator\.value/);
  assert.match(filterProblem('id=in.1,2'), /in takes a list in parentheses/);
  assert.match(filterProblem('id=eq.'), /no value after "eq\."/);
});

test('presence: a state, then diffs that join and leave by phx_ref', () => {
  let p = presenceAfter({}, { a: { metas: [{ phx_ref: '1', n: 1 }] } }, null);
  p = presenceAfter(p, null, { joins: { a: { metas: [{ phx_ref: '2', n: 2 }] }, b: { metas: [{ phx_ref: '3' }] } }, leaves: {} });
  assert.deepEqual(Object.keys(p).sort(), ['a', 'b']);
  assert.equal(p.a.length, 2);
  p = presenceAfter(p, null, { joins: {}, leaves: { a: { metas: [{ phx_ref: '1' }] }, b: { metas: [{ phx_ref: '3' }] } } });
  assert.deepEqual(p, { a: [{ phx_ref: '2', n: 2 }] });
});
