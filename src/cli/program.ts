import { readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { StartFrom } from '../types.js';
import { CliFailure, describeError, describeServer, EXIT, UsageError } from './errors.js';
import { columns as alignColumns, formatAge } from './format.js';
import { databaseUrl, openSession, type GlobalOptions, type Session, type SessionOptions } from './session.js';
import { formatStatus, readStatus } from './status.js';
import { relay } from './relay.js';
import { startRepl } from './repl.js';
import { tail } from './tail.js';

/**
 * Runs the `pgtide` command line and resolves to its exit code: 0 done, 1 failed,
 * 2 wrong command line (see {@link EXIT}). Errors are one line on stderr.
 *
 * @param argv - `process.argv`: node, the script, then the arguments.
 */
export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end the parse this way, successfully.
      if (error.exitCode === 0) return EXIT.ok;
      // No command given: the help went to stderr, which says it all.
      if (error.code === 'commander.help') return EXIT.usage;
      process.stderr.write(`pgtide: ${error.message.replace(/^error: /, '')} (see pgtide --help)\n`);
      return EXIT.usage;
    }
    const url = (() => {
      try {
        return databaseUrl(program.opts<GlobalOptions>());
      } catch {
        return undefined;
      }
    })();
    process.stderr.write(`pgtide: ${describeError(error, url && describeServer(url))}\n`);
    if (process.env.PGTIDE_DEBUG && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
    return error instanceof UsageError ? EXIT.usage : EXIT.failed;
  }
}

function buildProgram(): Command {
  const program = new Command('pgtide')
    .description('PostgreSQL data changes as streams: install pgtide, watch tables, tail their changes, inspect consumers.')
    .version(packageVersion(), '-V, --version')
    .option('--url <url>', 'PostgreSQL connection URI (default: $DATABASE_URL)')
    .option('--schema <name>', "pgtide's own schema", 'pgtide')
    .showSuggestionAfterError(true)
    .exitOverride()
    // Errors are printed by main(), one line each.
    .configureOutput({ outputError: () => undefined })
    .addHelpText(
      'after',
      '\nExit codes: 0 done, 1 failed (server unreachable, unknown table, ...), 2 wrong command line.\n' +
        'Examples:\n' +
        '  pgtide install\n' +
        '  pgtide watch mail_users --columns quota_bytes,username\n' +
        '  pgtide tail mail_users --from beginning --json > changes.ndjson\n' +
        '  pgtide tail mail_users --consumer mailer --limit 100\n' +
        '  pgtide relay --nats nats://localhost:4222 orders order_items\n' +
        '  pgtide status',
    );

  program
    .command('install')
    .description("create or upgrade pgtide's schema (log, registry, capture function) in the database")
    .action(withSession(program, { install: true }, async (session) => {
      const { schemaVersion } = await session.tide.logStats();
      say(`pgtide: schema ${JSON.stringify(session.tide.schema)} is installed at version ${schemaVersion} on ${session.server}`);
    }));

  program
    .command('watch')
    .description('capture changes of a table (updates only of --columns, if given); watching again widens the columns')
    .argument('<table>', "'name', 'schema.name' or quoted SQL identifiers")
    .addOption(columnsOption('capture updates only when one of these columns changes'))
    .action(withSession(program, { install: true }, async (session, table: string, options: { columns?: string[] }) => {
      const watched = await session.tide.watch(table, options.columns ? { columns: options.columns } : {});
      const captured = watched.columns;
      say(`pgtide: watching ${watched.table} (${captured ? `updates of: ${captured.join(', ')}` : 'every column'})`);
    }));

  program
    .command('unwatch')
    .description("stop capturing a table's changes; those already logged stay until pruned")
    .argument('<table>', "'name', 'schema.name' or quoted SQL identifiers")
    .action(withSession(program, { install: false }, async (session, table: string) => {
      const removed = await session.tide.unwatch(table);
      say(removed ? `pgtide: no longer watching ${table}` : `pgtide: ${table} was not watched`);
    }));

  program
    .command('tail')
    .description('print a table\'s changes as they commit: "op key  column: old -> new", or NDJSON with --json')
    .argument('<table>', "'name', 'schema.name' or quoted SQL identifiers (capture is installed if needed)")
    .addOption(columnsOption('only inserts, deletes, and updates of these columns; rows carry the key plus these'))
    .addOption(new Option('--row-id <value>', 'only this row: its key value, or a JSON object for a composite key').argParser(parseRowId))
    .addOption(new Option('--from <position>', "'now', 'beginning' (all still logged), or a change id to start after").default('now').argParser(parseFrom))
    .option('--consumer <name>', 'a durable consumer: resume from its saved position, acknowledge what is printed')
    .option('--json', 'print NDJSON: one change per line, as changes$ delivers it')
    .addOption(new Option('--limit <count>', 'stop after this many changes').argParser(positiveInteger))
    .option('--no-progress', 'no progress bar while replaying a long backlog')
    .action(
      withSession(
        program,
        { install: true },
        async (session, table: string, options: { columns?: string[]; rowId?: unknown; from: StartFrom | 'now'; consumer?: string; json?: boolean; limit?: number; progress: boolean }) => {
          process.exitCode = await tail(session, table, { ...options, json: options.json === true });
        },
      ),
    );

  program
    .command('relay')
    .description('relay the tables\' changes into NATS JetStream (deduplicated, per-row order) with a status line, until Ctrl-C')
    .argument('<table...>', "tables: 'name', 'schema.name' or quoted SQL identifiers (capture is installed if needed)")
    .requiredOption('--nats <url>', 'NATS server URL(s), comma-separated, such as nats://localhost:4222')
    .option('--consumer <name>', "the relay's durable consumer name (a second relay of this name waits as a standby)", 'pgtide-relay')
    .option('--stream <name>', 'the JetStream stream (created when missing)', 'PGTIDE')
    .option('--subject-prefix <token>', 'first subject token: subjects are <prefix>.<schema>.<table>', 'pgtide')
    .addOption(new Option('--from <position>', "where a new relay starts: 'now', 'beginning' or a change id").default('now').argParser(parseFrom))
    .addOption(new Option('--status-interval <duration>', 'time between status lines: 500ms, 5s, ...').default(1000, '1s').argParser(parseDuration))
    .action(
      withSession(
        program,
        { install: true },
        async (
          session,
          tables: string[],
          options: { nats: string; consumer: string; stream: string; subjectPrefix: string; from: StartFrom; statusInterval: number },
        ) => {
          process.exitCode = await relay(session, tables, options);
        },
      ),
    );

  program
    .command('repl')
    .description('a Node REPL with a connected tide, rxjs and every operator in scope (top-level await; .tail <table>, .stop)')
    .action(withSession(program, { install: true }, async (session) => {
      process.exitCode = await startRepl(session);
    }));

  program
    .command('status')
    .description('watched tables, log size, consumers with their position and lag')
    .option('--json', 'print one JSON object')
    .action(withSession(program, { install: false }, async (session, options: { json?: boolean }) => {
      const status = await readStatus(session, session.tide.schema);
      say(options.json ? JSON.stringify(status, null, 2) : formatStatus(status, session.server));
    }));

  program
    .command('prune')
    .description('delete logged changes every consumer acknowledged, and those older than --retention of tables without consumers')
    .addOption(new Option('--retention <duration>', 'keep changes of tables without a consumer this long: 90s, 15m, 24h, 7d').default(24 * 3600_000, '24h').argParser(parseDuration))
    .addOption(new Option('--max-lag <count>', 'expire consumers more than this many changes behind').default(10_000_000).argParser(positiveInteger))
    .action(
      withSession(
        program,
        (options: { retention: number; maxLag: number }) => ({ install: false, tide: { retention: options.retention, maxLag: options.maxLag } }),
        async (session) => {
          const result = await session.tide.prune();
          say(`pgtide: pruned ${result.deleted} change${result.deleted === 1 ? '' : 's'}`);
          if (result.expired.length > 0) say(`pgtide: expired consumers (more than --max-lag behind): ${result.expired.join(', ')}`);
        },
      ),
    );

  const consumers = program.command('consumers').description('list or drop durable consumers');
  consumers
    .command('list', { isDefault: true })
    .description('every durable consumer with its table, position and lag')
    .option('--json', 'print a JSON array')
    .action(withSession(program, { install: false }, async (session, options: { json?: boolean }) => {
      const list = await session.tide.consumers();
      if (options.json) return say(JSON.stringify(list, null, 2));
      if (list.length === 0) return say('pgtide: no consumers');
      say(
        alignColumns(
          list.map((consumer) => [
            consumer.name,
            consumer.table ?? '(table no longer watched)',
            consumer.acknowledgedId === null ? 'at log start' : `at #${consumer.acknowledgedId}`,
            consumer.expiredAt ? `EXPIRED ${consumer.expiredAt.toISOString()}` : `lag ${consumer.lagChanges}, ${formatAge(consumer.lagSeconds)}`,
          ]),
          '',
        ),
      );
    }));
  consumers
    .command('drop')
    .description('remove a durable consumer: it stops holding back the log, and its name can be used afresh')
    .argument('<name>', 'the consumer')
    .action(withSession(program, { install: false }, async (session, name: string) => {
      if (!(await session.tide.dropConsumer(name))) throw new CliFailure(`no consumer named ${JSON.stringify(name)}`);
      say(`pgtide: dropped consumer ${JSON.stringify(name)}`);
    }));

  const deadLetters = program
    .command('dead-letters')
    .description("list, retry or drop the changes a consumer's handlers gave up on (processChanges)");
  deadLetters
    .command('list', { isDefault: true })
    .description('the dead letters of a consumer (or consumer group), oldest first')
    .argument('<consumer>', 'the consumer or group')
    .option('--json', 'print a JSON array')
    .action(withSession(program, { install: false }, async (session, consumer: string, options: { json?: boolean }) => {
      const letters = await session.tide.deadLetters(consumer);
      if (options.json) return say(JSON.stringify(letters, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value), 2));
      if (letters.length === 0) return say(`pgtide: no dead letters for ${JSON.stringify(consumer)}`);
      say(
        alignColumns(
          letters.map((letter) => [
            `#${letter.id}`,
            `change ${letter.change.id} (${letter.change.op} ${letter.change.schema}.${letter.change.table} ${JSON.stringify(letter.change.key)})`,
            `${letter.attempts} attempt${letter.attempts === 1 ? '' : 's'}`,
            letter.retryRequestedAt ? 'retry asked' : `failed ${letter.failedAt.toISOString()}`,
            letter.error.replace(/\s+/g, ' ').slice(0, 80),
          ]),
          '',
        ),
      );
    }));
  const onSelected = [
    ['retry', "deliver dead letters again through the consumer's running stream (all, or the ids given)", 'asked to retry'],
    ['drop', 'remove dead letters (all, or the ids given); their changes may then be pruned', 'dropped'],
  ] as const;
  for (const [verb, description, done] of onSelected) {
    deadLetters
      .command(verb)
      .description(description)
      .argument('<consumer>', 'the consumer or group')
      .argument('[ids...]', 'dead letter ids (#n in the list)')
      .action(withSession(program, { install: false }, async (session, consumer: string, ids: string[]) => {
        const selected = ids.length > 0 ? ids.map(stripHash) : undefined;
        const count = await (verb === 'retry' ? session.tide.retryDeadLetters(consumer, selected) : session.tide.dropDeadLetters(consumer, selected));
        say(`pgtide: ${done} ${count} dead letter${count === 1 ? '' : 's'} of ${JSON.stringify(consumer)}`);
      }));
  }

  return program;
}

/** `#12` as the list prints it, or `12`. */
function stripHash(id: string): string {
  return id.startsWith('#') ? id.slice(1) : id;
}

type SessionSpec = { install: boolean; tide?: SessionOptions };

/**
 * Wraps a command's action: opens a session with the global options, runs the action
 * with the command's arguments and options, and always closes the session.
 */
function withSession<Args extends unknown[]>(
  program: Command,
  spec: SessionSpec | ((options: never) => SessionSpec),
  action: (session: Session, ...args: Args) => Promise<void>,
): (...args: unknown[]) => Promise<void> {
  return async (...args: unknown[]) => {
    // commander passes the arguments, then the command's options, then the command.
    const options = args[args.length - 2];
    const { install, tide } = typeof spec === 'function' ? spec(options as never) : spec;
    const session = await openSession(program.opts<GlobalOptions>(), { install, ...(tide ? { tide } : {}) });
    try {
      await action(session, ...(args.slice(0, -1) as Args));
    } finally {
      await session.close();
    }
  };
}

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

function columnsOption(description: string): Option {
  return new Option('--columns <a,b,...>', description).argParser((value: string) => {
    const names = value.split(',').map((name) => name.trim());
    if (names.some((name) => name === '')) throw new InvalidArgumentError('expected column names separated by commas, such as quota_bytes,username.');
    return names;
  });
}

function parseFrom(value: string): StartFrom {
  if (value === 'now' || value === 'beginning') return value;
  if (/^[1-9][0-9]{0,18}$/.test(value)) return { after: value };
  throw new InvalidArgumentError("expected 'now', 'beginning' or a change id.");
}

function parseRowId(value: string): unknown {
  if (!value.trimStart().startsWith('{')) return value;
  try {
    const parsed: unknown = JSON.parse(value);
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) return parsed;
  } catch {
    // reported below
  }
  throw new InvalidArgumentError('expected a key value, or a JSON object of key columns such as {"org":"x","user":7}.');
}

function positiveInteger(value: string): number {
  if (!/^[1-9][0-9]*$/.test(value) || !Number.isSafeInteger(Number(value))) throw new InvalidArgumentError('expected a positive integer.');
  return Number(value);
}

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

function parseDuration(value: string): number {
  const match = /^([0-9]+)(ms|s|m|h|d)$/.exec(value);
  if (!match) throw new InvalidArgumentError('expected a number with a unit: 500ms, 90s, 15m, 24h, 7d.');
  return Number(match[1]) * DURATION_UNITS[match[2]!]!;
}

/** The version in package.json, found from src/cli/ (tsx) or dist/ (the built command). */
function packageVersion(): string {
  for (const candidate of ['../package.json', '../../package.json']) {
    try {
      const json = JSON.parse(readFileSync(new URL(candidate, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (json.name === 'pgtide' && json.version) return json.version;
    } catch {
      // try the next
    }
  }
  return 'unknown';
}
