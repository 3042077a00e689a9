// Mail provisioning: a durable pgtide consumer keeps a tree of Maildirs in step with the
// mail_users table. Each change is applied to the filesystem and acknowledged only once
// that work is done, so a stop or crash at any point is repaired on the next start.
import { mkdir, readdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { concatMap, type Observable } from 'rxjs';
// In an application: import { acknowledge, type Change, type Tide } from 'pgtide';
import { acknowledge } from '../../operators/acknowledge.js';
import type { Tide } from '../../src/connect.js';
import type { Change } from '../../src/types.js';

/** A row of `mail_users`, as far as provisioning cares. */
export interface MailUser {
  readonly id: number;
  /** Group of the user's mail domain: homes live in `<root>/<gid>/<username>`. */
  readonly gid: number;
  readonly username: string;
  readonly quota_bytes: number;
}

/** The columns provisioning depends on: updates of any other column (last_login, ...) never wake it. */
export const PROVISIONED_COLUMNS = ['gid', 'username', 'quota_bytes'] as const;

/** The table, as the example and its test create it. */
export const MAIL_USERS_DDL = `
  CREATE TABLE mail_users (
    id serial PRIMARY KEY,
    gid int NOT NULL,
    username text NOT NULL UNIQUE,
    quota_bytes bigint NOT NULL,
    last_login timestamptz
  )`;

/**
 * Applies one change to the filesystem under `root`. Must be idempotent: delivery is
 * at-least-once. `warn` hears about rows it refuses (see {@link applyChange}).
 */
export type Apply = (root: string, change: Change<MailUser>, warn: (message: string) => void) => Promise<void>;

export interface ProvisionerOptions {
  /** Directory holding every user's home. */
  readonly root: string;
  /** Durable consumer name. Default `mail-provisioning`. */
  readonly consumer?: string;
  /** The filesystem work; default {@link applyChange}. Tests wrap it to pause or fail it. */
  readonly apply?: Apply;
  /** Where refused rows are reported. Default `console.warn`. */
  readonly warn?: (message: string) => void;
}

/**
 * The provisioning stream: subscribe to run it, unsubscribe (or `tide.close()`) to stop.
 * `concatMap` applies one change at a time, in order; `acknowledge()` after it marks a
 * change processed only when its filesystem work has finished. A first run starts at the
 * beginning of the log: watch `mail_users` before its first row is written (see README).
 */
export function provisioning(tide: Pick<Tide, 'changes$'>, options: ProvisionerOptions): Observable<Change<MailUser>> {
  const apply = options.apply ?? applyChange;
  const warn = options.warn ?? ((message: string) => console.warn(message));
  return tide
    .changes$<MailUser>('mail_users', {
      consumer: options.consumer ?? 'mail-provisioning',
      from: 'beginning',
      columns: [...PROVISIONED_COLUMNS],
    })
    .pipe(
      concatMap(async (change) => {
        await apply(options.root, change, warn);
        return change;
      }),
      acknowledge(),
    );
}

/** `<root>/<gid>/<username>` */
export function homeOf(root: string, user: Pick<MailUser, 'gid' | 'username'>): string {
  return join(root, String(user.gid), user.username);
}

/** Maildir++ quota file: its first line is the quota, `<bytes>S`. */
export function maildirsize(user: Pick<MailUser, 'quota_bytes'>): string {
  return `${user.quota_bytes}S\n`;
}

/**
 * Insert: create `Maildir/{cur,new,tmp}` and `maildirsize`. Update: move the home when
 * gid or username changed (mail inside moves with it), rewrite `maildirsize` when
 * quota_bytes changed. Delete: remove the home. Each step checks what is already there,
 * so applying a change twice, or an old change again after a crash, is harmless.
 *
 * A username becomes a path, so one that is not a plain name (`../x`, `a/b`) is refused
 * with a warning and the change counts as done: the row gets no home until it is renamed
 * to a plain name (that update provisions it), and a bad row never stops the others.
 */
export const applyChange: Apply = async (root, change, warn) => {
  const refused = (user: MailUser): boolean => {
    if (isSafe(user)) return false;
    warn(`mail-provisioning: skipping ${change.op} of user ${JSON.stringify(user.username)} (gid ${user.gid}): not a plain directory name`);
    return true;
  };
  switch (change.op) {
    case 'insert':
      if (!refused(change.new!)) await provisionHome(root, change.new!, true);
      return;
    case 'update': {
      const before = change.old!;
      const after = change.new!;
      if (refused(after)) return;
      const to = homeOf(root, after);
      if (isSafe(before)) {
        const from = homeOf(root, before);
        if (from !== to && (await exists(from)) && !(await exists(to))) {
          await mkdir(join(to, '..'), { recursive: true });
          await rename(from, to);
          await removeIfEmpty(join(from, '..'));
        }
      }
      await provisionHome(root, after, change.changed.includes('quota_bytes'));
      return;
    }
    case 'delete':
      if (!refused(change.old!)) await removeHome(root, change.old!);
      return;
  }
};

async function provisionHome(root: string, user: MailUser, writeQuota: boolean): Promise<void> {
  const home = homeOf(root, user);
  for (const folder of ['cur', 'new', 'tmp']) await mkdir(join(home, 'Maildir', folder), { recursive: true });
  const quotaFile = join(home, 'maildirsize');
  if (writeQuota || !(await exists(quotaFile))) {
    // Write and rename: a reader never sees a half-written quota.
    await writeFile(`${quotaFile}.tmp`, maildirsize(user));
    await rename(`${quotaFile}.tmp`, quotaFile);
  }
}

async function removeHome(root: string, user: MailUser): Promise<void> {
  const home = homeOf(root, user);
  await rm(home, { recursive: true, force: true });
  await removeIfEmpty(join(home, '..'));
}

/** Whether a user's home path stays a plain `<gid>/<username>` under the root. */
export function isSafe(user: Pick<MailUser, 'gid' | 'username'>): boolean {
  return /^[a-z0-9][a-z0-9._-]{0,63}$/i.test(user.username) && Number.isInteger(user.gid) && user.gid >= 0;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return false;
      throw error;
    },
  );
}

async function removeIfEmpty(directory: string): Promise<void> {
  if ((await exists(directory)) && (await readdir(directory)).length === 0) await rmdir(directory);
}
