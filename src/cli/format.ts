import type { Change } from '../types.js';

/** Longest value shown in human-readable output; longer ones are cut with `…` (NDJSON is never cut). */
const MAX_VALUE_LENGTH = 80;

/**
 * One line per change for people:
 *
 * ```
 * #12 2025-01-01T10:00:00.000Z insert id=1  gid=1000 username="ann" quota_bytes=1000000000
 * #13 2025-01-01T10:00:01.000Z update id=1  quota_bytes: 1000000000 -> 2000000000
 * #14 2025-01-01T10:00:02.000Z delete id=1  gid=1000 username="ann" quota_bytes=2000000000
 * #15 2025-01-01T10:00:03.000Z truncate public.mail_users
 * ```
 *
 * Updates show the changed columns the stream carries (all, or the key plus `--columns`)
 * as `old -> new`; inserts show the new row and deletes the old one. A truncate has no
 * key and no row: it shows the table it emptied, as `schema.table`.
 */
export function formatChange(change: Change): string {
  if (change.op === 'truncate') return `#${change.id} ${change.committedAt.toISOString()} truncate ${change.schema}.${change.table}`;
  const head = `#${change.id} ${change.committedAt.toISOString()} ${change.op.padEnd(6)} ${assignments(change.key)}`;
  const keyColumns = new Set(Object.keys(change.key));
  if (change.op === 'update') {
    const after = change.new ?? {};
    const before = change.old ?? {};
    const shown = change.changed.filter((column) => column in after || column in before);
    return `${head}  ${shown.map((column) => `${column}: ${formatValue(before[column])} -> ${formatValue(after[column])}`).join(', ')}`;
  }
  const row = (change.op === 'insert' ? change.new : change.old) ?? {};
  const rest = Object.fromEntries(Object.entries(row).filter(([column]) => !keyColumns.has(column)));
  return Object.keys(rest).length === 0 ? head : `${head}  ${assignments(rest)}`;
}

/** One line of NDJSON: the change exactly as `changes$` delivers it (`committedAt` as ISO 8601). */
export function formatChangeJson(change: Change): string {
  return JSON.stringify(change);
}

/** `a=1 b="x"` */
function assignments(values: Readonly<Record<string, unknown>>): string {
  return Object.entries(values)
    .map(([column, value]) => `${column}=${formatValue(value)}`)
    .join(' ');
}

/** Numbers, booleans and null as they are; strings and structures as JSON. */
export function formatValue(value: unknown): string {
  const text = value === undefined ? '∅' : JSON.stringify(value);
  return text.length > MAX_VALUE_LENGTH ? `${text.slice(0, MAX_VALUE_LENGTH - 1)}…` : text;
}

/** Rows of cells as aligned columns (two spaces apart), each line indented. */
export function columns(rows: readonly (readonly string[])[], indent = '  '): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, index) => (widths[index] = Math.max(widths[index] ?? 0, cell.length)));
  return rows
    .map((row) => indent + row.map((cell, index) => (index === row.length - 1 ? cell : cell.padEnd(widths[index]!))).join('  '))
    .join('\n');
}

/** `0.4 s`, `12 s`, `5 min`, `3.0 h`, `2.1 d` */
export function formatAge(seconds: number): string {
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172_800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86_400).toFixed(1)} d`;
}

/** `812 B`, `48 kB`, `1.2 MB`, ... */
export function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}
