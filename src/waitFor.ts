import type { Pool } from 'pg';
import { sleep } from './backoff.js';
import { PgTideError } from './errors.js';
import type { Hub } from './hub.js';
import { visibleIn } from './log.js';

/**
 * Resolves once transaction `txid` has committed and every live feed of the Tide has
 * read past it (so its changes are in every stream that follows the tables it wrote);
 * rejects with `TRANSACTION_ROLLED_BACK` if it rolled back, `WAIT_TIMEOUT` after `timeout`.
 */
export async function waitForTransaction(pool: Pool, hub: Hub, txid: string, timeout: number): Promise<void> {
  const target = BigInt(txid);
  const deadline = Date.now() + timeout;
  const timedOut = () =>
    new PgTideError('WAIT_TIMEOUT', `transaction ${txid} was not readable within ${timeout} ms`, { txid, timeout });
  for (let attempt = 0; ; attempt += 1) {
    const { rows } = await pool.query<{ status: string | null; visible: boolean }>(
      `SELECT pg_xact_status($1::xid8) AS status, pg_visible_in_snapshot($1::xid8, pg_current_snapshot()) AS visible`,
      [txid],
    ).catch((error: unknown) => {
      // A txid past every one assigned is "in the future": a typo, or another cluster's.
      throw new PgTideError('INVALID_OPTIONS', `waitFor: ${txid} is not a transaction of this server: ${String(error)}`, { txid }, { cause: error });
    });
    const { status, visible } = rows[0]!;
    if (status === 'aborted') {
      throw new PgTideError('TRANSACTION_ROLLED_BACK', `transaction ${txid} rolled back: it has no changes to wait for`, { txid });
    }
    if (visible && status !== 'in progress') break;
    if (Date.now() >= deadline) throw timedOut();
    await sleep(Math.min(50, 2 ** attempt, Math.max(1, deadline - Date.now())));
  }
  // Committed: now every feed must have read at a snapshot that sees it.
  const behind = [...hub.all()].filter((feed) => !visibleIn(feed.position.base, target) || feed.position.upto);
  await Promise.all(
    behind.map(
      (feed) =>
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => {
            remove();
            reject(timedOut());
          }, Math.max(0, deadline - Date.now()));
          const remove = feed.onRead((read) => {
            if (read.position.upto || !visibleIn(read.position.base, target)) return;
            clearTimeout(timer);
            remove();
            resolve();
          });
          feed.nudge();
        }),
    ),
  );
}
