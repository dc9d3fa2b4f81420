// The Realtime wire protocol as the inspector speaks it (docs/protocol.md): frames as `vsn`
// 1.0.0 (JSON objects) or 2.0.0 (JSON arrays, and binary user broadcasts) encode them, upstream's
// filter syntax, and presence synced as Phoenix's presence does. Pure: no DOM, no socket.

/** A message `{join_ref, ref, topic, event, payload}` as a text frame of `vsn`. */
export function encode(vsn, m) {
  return vsn === '1.0.0'
    ? JSON.stringify({ topic: m.topic, event: m.event, payload: m.payload, ref: m.ref, join_ref: m.join_ref })
    : JSON.stringify([m.join_ref, m.ref, m.topic, m.event, m.payload]);
}

/** A frame received, as a message; `null` when it is none (it is logged as it came). */
export function decode(vsn, data) {
  if (data instanceof ArrayBuffer) return decodeBroadcast(data);
  const parsed = JSON.parse(data);
  if (vsn === '1.0.0') return parsed;
  const [join_ref, ref, topic, event, payload] = parsed;
  return { join_ref, ref, topic, event, payload };
}

/** V2's binary user broadcast (kind 4): topic, event, metadata and payload by their lengths. */
function decodeBroadcast(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes[0] !== 4 || bytes.length < 5) return null;
  const text = new TextDecoder();
  let at = 5;
  const take = (n) => text.decode(bytes.subarray(at, (at += n)));
  const topic = take(bytes[1]);
  const event = take(bytes[2]);
  const meta = bytes[3] ? JSON.parse(take(bytes[3])) : undefined;
  const rest = bytes.subarray(at);
  const payload = bytes[4] === 1 ? JSON.parse(text.decode(rest)) : `(${rest.length} bytes of binary)`;
  return { join_ref: null, ref: null, topic, event: 'broadcast', payload: { type: 'broadcast', event, payload, ...(meta ? { meta } : {}) } };
}

/** The operators upstream's filters take (each maybe after `not.`). */
const OPERATORS = ['eq', 'neq', 'lt', 'lte', 'gt', 'gte', 'in', 'like', 'ilike', 'is', 'match', 'imatch', 'isdistinct'];

/**
 * Upstream's filter syntax, checked before a join: conditions `column=[not.]operator.value`
 * separated by commas (`in` takes a list: `id=in.(1,2)`; values may be double-quoted). `null`
 * when it reads well, else why not, in words. The server has the last word: its error texts are
 * shown as they come.
 */
export function filterProblem(filter) {
  if (filter.trim() === '') return null;
  for (const condition of conditions(filter.trim())) {
    const m = /^([^=]+)=(not\.)?([a-z]+)\.(.*)$/s.exec(condition);
    if (!m || !OPERATORS.includes(m[3])) {
      return `Filter "${condition}" is not column=operator.value with an operator among ${OPERATORS.join(', ')} (maybe after not.).`;
    }
    if (m[3] === 'in' && !/^\(.*\)$/s.test(m[4])) return `Filter "${condition}": in takes a list in parentheses, as in id=in.(1,2,3).`;
    if (m[4] === '') return `Filter "${condition}" has no value after "${m[3]}.".`;
  }
  return null;
}

/** A filter's conditions: split at commas outside parentheses and double quotes. */
function conditions(filter) {
  const out = [];
  let current = '';
  let depth = 0;
  let quoted = false;
  for (let i = 0; i < filter.length; i++) {
    const c = filter[i];
    if (quoted && c === '\\') {
      current += c + (filter[++i] ?? '');
      continue;
    }
    if (c === '"') quoted = !quoted;
    else if (!quoted && c === '(') depth++;
    else if (!quoted && c === ')') depth = Math.max(0, depth - 1);
    else if (!quoted && depth === 0 && c === ',') {
      out.push(current);
      current = '';
      continue;
    }
    current += c;
  }
  return [...out, current];
}

/** Presence after a full `state` (key → {metas}) or a `diff` ({joins, leaves}): key → metas. */
export function presenceAfter(current, state, diff) {
  const next = state ? Object.fromEntries(Object.entries(state).map(([k, v]) => [k, [...(v.metas ?? [])]])) : { ...current };
  if (diff) {
    for (const [key, { metas }] of Object.entries(diff.leaves ?? {})) {
      const gone = new Set(metas.map((m) => m.phx_ref));
      next[key] = (next[key] ?? []).filter((m) => !gone.has(m.phx_ref));
      if (!next[key].length) delete next[key];
    }
    for (const [key, { metas }] of Object.entries(diff.joins ?? {})) {
      const known = new Set((next[key] ?? []).map((m) => m.phx_ref));
      next[key] = [...(next[key] ?? []), ...metas.filter((m) => !known.has(m.phx_ref))];
    }
  }
  return next;
}
