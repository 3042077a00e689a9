import { PgTideError } from './errors.js';
import type { Change, Operation } from './types.js';

// Changes as text, for other processes and other languages: JSON, with the values JSON
// cannot say tagged, so the other side decodes what changes$ delivered (a bigint, a Date,
// bytes, NaN, -0, undefined) rather than a lookalike. A tagged value is an object
// {"$pgtide": tag, "v": ...}; a row's own object that has a "$pgtide" key is wrapped the
// same way (tag "object"), so no value can pass for a tag.

const tag = '$pgtide';

type Tagged = { readonly [tag]: string; readonly v?: unknown };

// Node has Buffer (what pg returns for bytea); a browser has only Uint8Array and atob/btoa.
const NodeBuffer = (globalThis as { Buffer?: typeof Buffer }).Buffer;

function toBase64(bytes: Uint8Array): string {
  if (NodeBuffer) return NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function fromBase64(text: string): Uint8Array {
  if (NodeBuffer) return NodeBuffer.from(text, 'base64');
  return Uint8Array.from(atob(text), (char) => char.charCodeAt(0));
}

/**
 * Any value (a row, a key) as JSON-ready data that {@link decodeValues} turns back into
 * the same value (see {@link encodeChange} for the tags).
 */
export function encodeValues(value: unknown): unknown {
  return encodeValue(value);
}

/** The value {@link encodeValues} encoded (after `JSON.parse`). */
export function decodeValues(value: unknown): unknown {
  return decodeValue(value);
}

function encodeValue(value: unknown): unknown {
  switch (typeof value) {
    case 'bigint':
      return { [tag]: 'bigint', v: value.toString() };
    case 'undefined':
      return { [tag]: 'undefined' };
    case 'number':
      if (Number.isFinite(value) && !Object.is(value, -0)) return value;
      return { [tag]: 'number', v: Object.is(value, -0) ? '-0' : String(value) };
    case 'object': {
      if (value === null) return null;
      if (value instanceof Date) return { [tag]: 'date', v: Number.isNaN(value.getTime()) ? null : value.toISOString() };
      if (value instanceof Uint8Array) return { [tag]: 'bytes', v: toBase64(value) };
      if (Array.isArray(value)) return value.map(encodeValue);
      // fromEntries defines own properties: a column or JSON key named __proto__ stays data.
      const encoded = Object.fromEntries(Object.entries(value).map(([key, field]) => [key, encodeValue(field)]));
      return Object.hasOwn(encoded, tag) ? { [tag]: 'object', v: encoded } : encoded;
    }
    default:
      return value;
  }
}

function decodeValue(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map(decodeValue);
  const record = value as Record<string, unknown>;
  if (Object.hasOwn(record, tag)) return decodeTagged(record as Tagged);
  return decodeFields(record);
}

function decodeFields(record: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(record).map(([key, field]) => [key, decodeValue(field)]));
}

function decodeTagged(value: Tagged): unknown {
  switch (value[tag]) {
    case 'bigint':
      return BigInt(value.v as string);
    case 'undefined':
      return undefined;
    case 'number':
      return Number(value.v as string);
    case 'date':
      return new Date(value.v === null ? Number.NaN : (value.v as string));
    case 'bytes':
      return fromBase64(value.v as string);
    case 'object':
      return decodeFields(value.v as Record<string, unknown>);
    default:
      throw new PgTideError('INVALID_MESSAGE', `an encoded change holds an unknown value tag ${JSON.stringify(value[tag])}`, {
        tag: value[tag],
      });
  }
}

const operations: ReadonlySet<Operation> = new Set(['insert', 'update', 'delete', 'truncate']);

/**
 * A change as JSON text that {@link decodeChange} turns back into the same change: every
 * value as `changes$` delivered it (bigints, Dates, bytes (a Buffer in Node, a Uint8Array in
 * a browser), NaN and -0 included; class
 * instances, such as an interval, arrive as plain objects of their fields). What the
 * JetStream relay publishes, readable from any language: plain JSON, with values JSON
 * cannot hold written as `{"$pgtide": "<tag>", "v": ...}`.
 */
export function encodeChange(change: Change<unknown>): string {
  const { id, txid, schema, table, op, key, changed, committedAt } = change;
  const body: Record<string, unknown> = { id, txid, schema, table, op, key: encodeValue(key), changed, committedAt: committedAt.toISOString() };
  if (change.new !== undefined) body.new = encodeValue(change.new);
  if (change.old !== undefined) body.old = encodeValue(change.old);
  return JSON.stringify(body);
}

/**
 * The change {@link encodeChange} wrote.
 *
 * @throws PgTideError `INVALID_MESSAGE` when the text is not an encoded change.
 */
export function decodeChange<Row = Record<string, unknown>>(text: string): Change<Row> {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new PgTideError('INVALID_MESSAGE', `not an encoded change: ${String(error)}`, {}, { cause: error });
  }
  return changeFromData<Row>(body);
}

/** @internal {@link decodeChange} of text already parsed (an encoded change inside a larger JSON document). */
export function changeFromData<Row = Record<string, unknown>>(data: unknown): Change<Row> {
  const body = data as Record<string, unknown>;
  if (typeof body !== 'object' || body === null) throw new PgTideError('INVALID_MESSAGE', 'not an encoded change: not a JSON object', {});
  const { id, txid, schema, table, op, changed, committedAt } = body;
  if (
    typeof id !== 'string' || typeof txid !== 'string' || typeof schema !== 'string' || typeof table !== 'string' ||
    !operations.has(op as Operation) || !Array.isArray(changed) || typeof committedAt !== 'string' ||
    typeof body.key !== 'object' || body.key === null
  ) {
    throw new PgTideError('INVALID_MESSAGE', 'not an encoded change: a field is missing or of the wrong type', {});
  }
  return {
    id,
    txid,
    schema,
    table,
    op: op as Operation,
    key: decodeValue(body.key) as Record<string, unknown>,
    ...(body.new !== undefined ? { new: decodeValue(body.new) as Row } : {}),
    ...(body.old !== undefined ? { old: decodeValue(body.old) as Row } : {}),
    changed: changed as string[],
    committedAt: new Date(committedAt),
  };
}
