import { describe, expect, it } from 'vitest';
import { rowKey } from '../../operators/rowKey.js';

const users = { schema: 'public', table: 'users' };

describe('rowKey', () => {
  it('names schema, table and the key entries sorted by column', () => {
    expect(rowKey({ ...users, key: { id: 42 } })).toBe('["public","users",[["id","42"]]]');
    expect(rowKey({ ...users, key: { b: 'x', a: 1 } })).toBe(rowKey({ ...users, key: { a: 1, b: 'x' } }));
    expect(rowKey({ ...users, key: { b: 'x', a: 1 } })).toBe('["public","users",[["a","1"],["b","x"]]]');
  });

  it('treats numbers, bigints and their decimal strings alike', () => {
    const byNumber = rowKey({ ...users, key: { id: 42 } });
    expect(rowKey({ ...users, key: { id: '42' } })).toBe(byNumber);
    expect(rowKey({ ...users, key: { id: 42n } })).toBe(byNumber);
    expect(rowKey({ ...users, key: { id: '042' } })).not.toBe(byNumber);
  });

  it('keeps other types apart from their string forms', () => {
    expect(rowKey({ ...users, key: { flag: true } })).not.toBe(rowKey({ ...users, key: { flag: 'true' } }));
    expect(rowKey({ ...users, key: { id: null } })).not.toBe(rowKey({ ...users, key: { id: 'null' } }));
    expect(rowKey({ ...users, key: { id: undefined } })).toBe(rowKey({ ...users, key: { id: null } }));
  });

  it('writes dates as ISO strings', () => {
    const when = new Date('2024-01-01T00:00:00.000Z');
    expect(rowKey({ ...users, key: { day: when } })).toBe(rowKey({ ...users, key: { day: '2024-01-01T00:00:00.000Z' } }));
  });

  it('tells tables and schemas apart, even when names contain separators', () => {
    const key = { id: 1 };
    expect(rowKey({ schema: 'public', table: 'users', key })).not.toBe(rowKey({ schema: 'public', table: 'admins', key }));
    expect(rowKey({ schema: 'a.b', table: 'c', key })).not.toBe(rowKey({ schema: 'a', table: 'b.c', key }));
    expect(rowKey({ ...users, key: { a: '1","b' } })).not.toBe(rowKey({ ...users, key: { a: '1', b: '' } }));
  });

  it('names the whole table for a truncate\'s empty key, as a prefix of every row key of the table', () => {
    const table = rowKey({ ...users, key: {} });
    expect(table).toBe('["public","users",[]]');
    expect(rowKey({ ...users, key: { id: 1 } })).not.toBe(table);
    expect(rowKey({ ...users, key: { id: 1 } }).startsWith('["public","users",')).toBe(true);
    expect(rowKey({ schema: 'public', table: 'admins', key: {} })).not.toBe(table);
  });

  it('throws a TypeError for a bigint nested in an object', () => {
    expect(() => rowKey({ ...users, key: { id: { n: 1n } } })).toThrow(TypeError);
  });
});
