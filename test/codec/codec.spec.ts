import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeChange, encodeChange } from '../../src/codec.js';
import type { Change } from '../../src/types.js';

// The change codec (what the JetStream relay publishes) must give back exactly the values
// changes$ delivered, whatever they are: pg's parsers return strings, numbers (NaN and
// -0 included), booleans, Dates, Buffers, arrays and JSON; custom parsers bigints.

const value: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.string(),
    fc.double(),
    fc.constantFrom(Number.NaN, -0, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY),
    fc.boolean(),
    fc.constant(null),
    fc.constant(undefined),
    fc.bigInt(),
    fc.date(),
    fc.constant(new Date(Number.NaN)),
    fc.uint8Array().map((bytes) => Buffer.from(bytes)),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.oneof(fc.string(), fc.constantFrom('$pgtide', 'v', '__proto__')), tie('value'), { maxKeys: 4, noNullPrototype: true }),
  ),
})).value;

const row = fc.dictionary(fc.oneof(fc.string(), fc.constantFrom('$pgtide', '__proto__')), value, { maxKeys: 5, noNullPrototype: true });

const change: fc.Arbitrary<Change> = fc.record({
  id: fc.bigInt({ min: 1n, max: 2n ** 63n - 1n }).map(String),
  txid: fc.bigInt({ min: 3n, max: 2n ** 63n - 1n }).map(String),
  schema: fc.string(),
  table: fc.string(),
  op: fc.constantFrom('insert', 'update', 'delete', 'truncate' as const),
  key: row,
  new: fc.option(row, { nil: undefined }),
  old: fc.option(row, { nil: undefined }),
  changed: fc.array(fc.string()),
  committedAt: fc.date({ noInvalidDate: true }),
}).map((fields) => {
  const { new: after, old: before, ...rest } = fields;
  return { ...rest, ...(after !== undefined ? { new: after } : {}), ...(before !== undefined ? { old: before } : {}) } as Change;
});

describe('encodeChange / decodeChange', () => {
  it('gives back the same change, value for value', () => {
    fc.assert(
      fc.property(change, (original) => {
        expect(decodeChange(encodeChange(original))).toStrictEqual(original);
      }),
      { numRuns: 500 },
    );
  });

  it('keeps a row key named __proto__ as data, and a JSON object with a "$pgtide" key as an object', () => {
    const original: Change = {
      id: '1', txid: '5', schema: 'public', table: 't', op: 'insert', changed: ['doc'], committedAt: new Date(0),
      key: { id: 1 },
      new: JSON.parse('{"__proto__": {"polluted": true}, "doc": {"$pgtide": "bigint", "v": "1"}}') as Record<string, unknown>,
    };
    const decoded = decodeChange(encodeChange(original));
    expect(decoded).toStrictEqual(original);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.getPrototypeOf(decoded.new)).toBe(Object.prototype);
  });

  it('refuses text that is not an encoded change with INVALID_MESSAGE', () => {
    for (const text of ['', 'null', '{"id": 1}', '{"id":"1","txid":"2","schema":"s","table":"t","op":"merge","key":{},"changed":[],"committedAt":"x"}']) {
      expect(() => decodeChange(text)).toThrow(expect.objectContaining({ code: 'INVALID_MESSAGE' }));
    }
    expect(() => decodeChange('{"id":"1","txid":"2","schema":"s","table":"t","op":"insert","key":{"k":{"$pgtide":"nope"}},"changed":[],"committedAt":"1970-01-01T00:00:00.000Z"}')).toThrow(
      expect.objectContaining({ code: 'INVALID_MESSAGE' }),
    );
  });
});
