import { inspect } from 'node:util';
import repl from 'node:repl';
import * as rxjs from 'rxjs';
import type { Subscription } from 'rxjs';
import * as operators from '../../operators/index.js';
import type { Change } from '../types.js';
import { formatChange } from './format.js';
import type { Session } from './session.js';

/** Whether a value is a change as streams deliver it (printed as `tail` prints changes). */
function isChange(value: unknown): value is Change {
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as Partial<Change>;
  return (
    typeof candidate.id === 'string' &&
    typeof candidate.op === 'string' &&
    typeof candidate.table === 'string' &&
    typeof candidate.key === 'object' &&
    candidate.committedAt instanceof Date
  );
}

/** A REPL result: changes (and arrays of them) one line each, as `pgtide tail` prints them; the rest as Node prints it. */
export function formatResult(value: unknown): string {
  if (isChange(value)) return formatChange(value);
  if (Array.isArray(value) && value.length > 0 && value.every(isChange)) return value.map(formatChange).join('\n');
  return inspect(value, { colors: process.stdout.isTTY === true, depth: 4 });
}

/**
 * `pgtide repl`: a Node REPL for live coding against the database, with `tide` (this
 * session's, connected), `rxjs` and its exports, and every pgtide operator in scope; top-level
 * `await` works. `.tail <table>` prints a table's changes as they commit, `.stop` ends every
 * tail. Resolves with 0 when the REPL ends (`.exit`, Ctrl-D).
 */
export async function startRepl(session: Session): Promise<number> {
  const tails = new Map<string, Subscription>();
  const server = repl.start({
    prompt: 'pgtide> ',
    ignoreUndefined: true,
    useGlobal: false,
    writer: formatResult,
  });
  Object.assign(server.context, rxjs, operators, { rxjs, tide: session.tide, pool: session.pool });
  const say = (text: string) => {
    server.output.write(`${text}\n`);
    server.displayPrompt(true);
  };
  server.defineCommand('tail', {
    help: 'Print a table\'s changes as they commit (".tail mail_users"); ".stop" ends it',
    action(table: string) {
      const name = table.trim();
      this.clearBufferedCommand();
      if (name === '') {
        say('usage: .tail <table>');
        return;
      }
      tails.get(name)?.unsubscribe();
      tails.set(
        name,
        session.tide.changes$(name).subscribe({
          next: (change) => say(formatChange(change)),
          error: (error: unknown) => {
            tails.delete(name);
            say(`pgtide: .tail ${name}: ${error instanceof Error ? error.message : String(error)}`);
          },
        }),
      );
      say(`pgtide: following ${name} (.stop to end)`);
    },
  });
  server.defineCommand('stop', {
    help: 'End every .tail',
    action() {
      this.clearBufferedCommand();
      const stopped = [...tails.keys()];
      for (const subscription of tails.values()) subscription.unsubscribe();
      tails.clear();
      say(stopped.length === 0 ? 'pgtide: nothing to stop' : `pgtide: stopped ${stopped.join(', ')}`);
    },
  });
  server.output.write(
    `pgtide REPL on ${session.server}: tide, rxjs and the pgtide operators are in scope; await works; ` +
      '.tail <table>, .stop, .help, .exit\n',
  );
  server.displayPrompt();
  await new Promise<void>((resolve) => server.once('exit', resolve));
  for (const subscription of tails.values()) subscription.unsubscribe();
  return 0;
}
