import type { ConsumerInfo } from '../consumers.js';
import type { WatchedTable } from '../status.js';
import type { Blocker } from '../types.js';
import { columns, formatAge, formatBytes } from './format.js';
import type { Session } from './session.js';

/** What `pgtide status` reports (`--json` prints exactly this). */
export interface Status {
  readonly schema: string;
  /** Installed schema version. */
  readonly version: number;
  readonly watched: readonly WatchedTable[];
  readonly log: {
    /** Rows in the log, all tables. */
    readonly changes: number;
    /** Size on disk of the log table with its indexes. */
    readonly bytes: number;
    readonly oldestWrittenAt: Date | null;
  };
  readonly consumers: readonly ConsumerInfo[];
  /** Open writing transactions, oldest first: what holds delivery back. */
  readonly blockers: readonly Blocker[];
}

export async function readStatus(session: Session, schema: string): Promise<Status> {
  const { tide } = session;
  const [watched, log, consumers, blockers] = await Promise.all([
    tide.watched(),
    tide.logStats(),
    tide.consumers(),
    tide.blockers(),
  ]);
  return {
    schema,
    version: log.schemaVersion,
    watched,
    log: { changes: log.changes, bytes: log.bytes, oldestWrittenAt: log.oldestWrittenAt },
    consumers,
    // The CLI's own connections are not what anyone waits for.
    blockers: blockers.filter((blocker) => blocker.applicationName !== 'pgtide-cli'),
  };
}

/**
 * ```
 * pgtide schema "pgtide" at version 2 on 127.0.0.1:5432/app
 *
 * watched tables (1)
 *   public.mail_users  updates of: quota_bytes  12 changes in the log
 * log: 12 changes, 64 kB, oldest written 3.2 s ago
 * consumers (1)
 *   mailer  public.mail_users  at #10  lag 2 changes, 3.1 s  acknowledged 2025-01-01T10:00:00.000Z
 * ```
 */
export function formatStatus(status: Status, server: string, now = new Date()): string {
  const lines = [`pgtide schema ${JSON.stringify(status.schema)} at version ${status.version} on ${server}`, ''];
  lines.push(`watched tables (${status.watched.length})`);
  if (status.watched.length > 0) {
    lines.push(
      columns(
        status.watched.map((table) => [
          table.table,
          table.columns ? `updates of: ${table.columns.join(', ')}` : 'every column',
          `${plural(table.changes, 'change')} in the log`,
        ]),
      ),
    );
  }
  const oldest = status.log.oldestWrittenAt;
  lines.push(
    `log: ${plural(status.log.changes, 'change')}, ${formatBytes(status.log.bytes)}` +
      (oldest ? `, oldest written ${formatAge((now.getTime() - oldest.getTime()) / 1000)} ago` : ''),
  );
  lines.push(`consumers (${status.consumers.length})`);
  if (status.consumers.length > 0) {
    lines.push(
      columns(
        status.consumers.map((consumer) => [
          consumer.name,
          consumer.table ?? '(table no longer watched)',
          consumer.acknowledgedId === null ? 'at log start' : `at #${consumer.acknowledgedId}`,
          consumer.expiredAt
            ? `EXPIRED ${consumer.expiredAt.toISOString()}`
            : `lag ${plural(consumer.lagChanges, 'change')}, ${formatAge(consumer.lagSeconds)}`,
          `acknowledged ${consumer.acknowledgedAt.toISOString()}`,
        ]),
      ),
    );
    for (const consumer of status.consumers) {
      if (!consumer.group) continue;
      const { group } = consumer;
      lines.push(`group ${consumer.name}: ${group.partitions} partitions, ${plural(group.members.length, 'member')}` +
        (group.unheld.length > 0 ? `, unheld: ${ranges(group.unheld)}` : ''));
      if (group.members.length > 0) {
        lines.push(
          columns(
            group.members.map((member) => [
              member.member,
              member.holds.length > 0 ? `holds ${ranges(member.holds)}` : 'holds nothing',
              `lag ${plural(member.lagChanges, 'change')}, ${formatAge(member.lagSeconds)}`,
              `joined ${member.joinedAt.toISOString()}`,
            ]),
          ).replace(/^/gm, '  '),
        );
      }
    }
  }
  if (status.blockers.length > 0) {
    lines.push(`open writing transactions (${status.blockers.length}; changes wait for the oldest)`);
    lines.push(
      columns(
        status.blockers.map((blocker) => [
          `pid ${blocker.pid}`,
          `open ${formatAge(blocker.ageSeconds)}`,
          blocker.state ?? '',
          (blocker.query ?? '').replace(/\s+/g, ' ').slice(0, 60),
        ]),
      ),
    );
  }
  return lines.join('\n');
}

/** Partition numbers as ranges: 0-3, 8, 10-11. */
export function ranges(numbers: readonly number[]): string {
  const parts: string[] = [];
  for (let index = 0; index < numbers.length; ) {
    let end = index;
    while (end + 1 < numbers.length && numbers[end + 1] === numbers[end]! + 1) end += 1;
    parts.push(end === index ? `${numbers[index]}` : `${numbers[index]}-${numbers[end]}`);
    index = end + 1;
  }
  return parts.join(', ');
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}
