import { describe, expect, it } from 'vitest';
import { formatChange, formatChangeJson } from '../../src/cli/format.js';
import { del, insert, truncate, update } from '../../src/testing/index.js';

const at = new Date('2025-01-01T10:00:00.000Z');

describe('formatChange', () => {
  it('prints inserts, updates and deletes with their key and rows', () => {
    const row = { id: 1, gid: 1000, username: 'ann' };
    expect(formatChange(insert('mail_users', row, { id: 12, committedAt: at }))).toBe(
      '#12 2025-01-01T10:00:00.000Z insert id=1  gid=1000 username="ann"',
    );
    expect(formatChange(update('mail_users', { ...row, gid: 2000 }, row, { id: 13, committedAt: at }))).toBe(
      '#13 2025-01-01T10:00:00.000Z update id=1  gid: 1000 -> 2000',
    );
    expect(formatChange(del('mail_users', row, { id: 14, committedAt: at }))).toBe(
      '#14 2025-01-01T10:00:00.000Z delete id=1  gid=1000 username="ann"',
    );
  });

  it('prints a truncate as the table it emptied', () => {
    expect(formatChange(truncate('mail_users', { id: 15, committedAt: at }))).toBe(
      '#15 2025-01-01T10:00:00.000Z truncate public.mail_users',
    );
    expect(formatChange(truncate('billing.invoices', { id: 16, committedAt: at }))).toBe(
      '#16 2025-01-01T10:00:00.000Z truncate billing.invoices',
    );
  });
});

describe('formatChangeJson', () => {
  it('writes a truncate exactly as streams deliver it', () => {
    const change = truncate('mail_users', { id: 15, txid: 900, committedAt: at });
    expect(formatChangeJson(change)).toBe(
      '{"id":"15","txid":"900","schema":"public","table":"mail_users","op":"truncate","key":{},"changed":[],"committedAt":"2025-01-01T10:00:00.000Z"}',
    );
    expect(JSON.parse(formatChangeJson(change))).toEqual({ ...change, committedAt: at.toISOString() });
  });
});
