// Backlog replay in a fresh process (so peak RSS is this reader's own): the whole log of
// one table through changes$ from 'beginning', or a raw pg-cursor read of the same rows.
import pg from 'pg';
import Cursor from 'pg-cursor';
import { count, firstValueFrom, take } from 'rxjs';
import type { Channel } from '../worker.js';
import { connectTide } from '../lib/db.js';
import { nowMs } from '../lib/stats.js';

export interface ReplayArgs {
  readonly url: string;
  readonly table: string;
  readonly total: number;
  readonly mode: 'pgtide' | 'cursor';
  /** Rows per cursor read (mode cursor). */
  readonly batch: number;
  /** pgtide pageSize; undefined: the library's default. */
  readonly pageSize?: number;
}

export interface ReplayResult {
  readonly rows: number;
  readonly seconds: number;
  readonly rate: number;
  readonly maxRssMB: number;
  readonly rssAtStartMB: number;
}

export default async function replay(args: ReplayArgs, _channel: Channel): Promise<ReplayResult> {
  const rssAtStartMB = process.memoryUsage().rss / 2 ** 20;
  let rows = 0;
  let seconds = 0;
  if (args.mode === 'pgtide') {
    const tide = await connectTide(args.url, args.pageSize === undefined ? {} : { pageSize: args.pageSize });
    const start = nowMs();
    rows = await firstValueFrom(tide.changes$(args.table, { from: 'beginning' }).pipe(take(args.total), count()));
    seconds = (nowMs() - start) / 1000;
    await tide.close();
  } else {
    const client = new pg.Client({ connectionString: args.url });
    await client.connect();
    // The same rows, columns and order pgtide reads, in one server-side cursor. Logs
    // before the snapshot-batch reader (issue 9) have a position column and are read in
    // (pos, id) order; since then one batch (all of a backlog) is read in id order.
    const { rows: found } = await client.query<{ has_pos: boolean }>(
      `SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'pgtide.log'::regclass AND attname = 'pos' AND NOT attisdropped) AS has_pos`,
    );
    const text = found[0]!.has_pos
      ? `SELECT l.id, l.pos, l.txid, l.op, l.changed, l.new, l.old, l.written_at
           FROM pgtide.log l WHERE l.relid = $1::regclass ORDER BY l.pos, l.id`
      : `SELECT l.id, l.txid, l.op, l.changed, l.new, l.old, l.written_at
           FROM pgtide.log l WHERE l.relid = $1::regclass ORDER BY l.id`;
    const start = nowMs();
    const cursor = client.query(new Cursor(text, [args.table]));
    for (;;) {
      const batch = await cursor.read(args.batch);
      rows += batch.length;
      if (batch.length === 0 || rows >= args.total) break;
    }
    seconds = (nowMs() - start) / 1000;
    await cursor.close();
    await client.end();
  }
  return { rows, seconds, rate: rows / seconds, maxRssMB: process.resourceUsage().maxRSS / 1024, rssAtStartMB };
}
