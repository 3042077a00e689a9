// The JetStream bridge row (bench/scenarios/jetstream.ts), one process per run:
//  - relay: relayToJetStream() of a backlog from 'beginning' into a fresh stream, timed
//    from the call until status().relayed reaches the backlog (every change acknowledged
//    by JetStream);
//  - bare:  the same encoded payloads (read once by the parent), subjects shape, msgIDs
//    and headers, published with the bare client, jetstream(nc).publish(), with `window`
//    publishes outstanding, into another fresh stream, timed from the first publish to
//    the last ack;
//  - inbox: the same, published as the relay publishes (core publishes whose acks all
//    arrive on one wildcard inbox): what the relay adds to its publishing;
//  - live:  a relay of the latency table left running ('ready' once it is registered)
//    until the parent says 'stop'.
import { jetstream } from '@nats-io/jetstream';
import { createInbox, headers, type MsgHdrs, type NatsConnection } from '@nats-io/nats-core';
import { connect as connectNats } from '@nats-io/transport-node';
import { relayHeaders, relayToJetStream, type Relay, type RelayStatus } from '../../src/nats.js';
import type { Channel } from '../worker.js';
import { cpuSince, processCpuMs, serverCpu } from '../lib/cpu.js';
import { connectTide, silentLogger } from '../lib/db.js';
import { nowMs } from '../lib/stats.js';

/** What the bare publisher sends: the relay's message for each change, precomputed. */
export interface Payloads {
  readonly bodies: readonly string[];
  readonly msgIDs: readonly string[];
  readonly ops: readonly string[];
  readonly txids: readonly string[];
  readonly changeIds: readonly string[];
  /** `schema.table`, the table header. */
  readonly table: string;
}

/** A bare publisher's run (modes bare and inbox). */
interface PublishArgs {
  readonly natsUrl: string;
  readonly total: number;
  readonly stream: string;
  readonly subject: string;
  readonly window: number;
  readonly payloads: Payloads;
  readonly natsPid: number | undefined;
}

export type RelayArgs =
  | {
      readonly mode: 'relay';
      readonly url: string;
      readonly natsUrl: string;
      readonly table: string;
      readonly total: number;
      readonly consumer: string;
      readonly stream: string;
      readonly subjectPrefix: string;
      readonly window: number;
      /** PostgreSQL's postmaster and nats-server, whose CPU over the timed span is reported. */
      readonly postmaster: number;
      readonly natsPid: number | undefined;
    }
  | (PublishArgs & { readonly mode: 'bare' })
  | (PublishArgs & { readonly mode: 'inbox' })
  | {
      readonly mode: 'live';
      readonly url: string;
      readonly natsUrl: string;
      readonly table: string;
      readonly consumer: string;
      readonly stream: string;
      readonly subjectPrefix: string;
      readonly window: number;
    };

export interface RelayResult {
  readonly mode: RelayArgs['mode'];
  /** Changes JetStream acknowledged. */
  readonly relayed: number;
  readonly duplicates: number;
  readonly retries: number;
  readonly seconds: number;
  readonly rate: number;
  /** relay: the call -> relayToJetStream() resolved (registered), ms. */
  readonly startupMs: number;
  /** relay: the call -> the first change acknowledged by JetStream, ms (at most startupMs later: seen once the call resolved). */
  readonly firstMs: number;
  /** relay: the last JetStream ack -> close() resolved (the pgtide position saved), ms. */
  readonly closeMs: number;
  /** CPU (user + system) over the timed span, ms: this process, PostgreSQL (every server process), nats-server. */
  readonly cpuMs: number;
  readonly postgresCpuMs: number;
  readonly natsCpuMs: number;
  readonly maxRssMB: number;
  readonly warnings: string[];
  readonly lastError?: string;
}

const stallMs = 30_000;

type Publish = (subject: string, body: string, msgID: string, hdrs: MsgHdrs) => Promise<boolean>;

/** jetstream(nc).publish(): a request per message. */
function requestPublisher(nats: NatsConnection): Publish {
  const js = jetstream(nats);
  return async (subject, body, msgID, hdrs) => (await js.publish(subject, body, { msgID, headers: hdrs, timeout: 5000 })).duplicate;
}

/** Core publishes whose acks arrive on one wildcard inbox, matched by reply token (no timeouts: a bench run that stalls fails). */
function inboxPublisher(nats: NatsConnection): Publish {
  const inbox = createInbox();
  const pending = new Map<string, (duplicate: boolean) => void>();
  let sequence = 0;
  nats.subscribe(`${inbox}.*`, {
    callback: (error, message) => {
      if (error) throw error;
      const token = message.subject.slice(inbox.length + 1);
      const ack = JSON.parse(message.string()) as { readonly duplicate?: boolean; readonly error?: unknown };
      if (ack.error) throw new Error(`publish refused: ${JSON.stringify(ack.error)}`);
      pending.get(token)?.(ack.duplicate === true);
      pending.delete(token);
    },
  });
  return (subject, body, msgID, hdrs) => {
    const token = (sequence += 1).toString(36);
    hdrs.set('Nats-Msg-Id', msgID);
    return new Promise<boolean>((resolve) => {
      pending.set(token, resolve);
      nats.publish(subject, body, { reply: `${inbox}.${token}`, headers: hdrs });
    });
  };
}

/** Resolves with the first status whose `relayed` reaches `total`; rejects when the relay fails or stalls. */
function relayedAll(relay: Relay, total: number): Promise<RelayStatus> {
  return new Promise((resolve, reject) => {
    let last = -1;
    let progressAt = nowMs();
    const watchdog = setInterval(() => {
      const status = relay.status();
      if (status.relayed !== last) {
        last = status.relayed;
        progressAt = nowMs();
      } else if (nowMs() - progressAt > stallMs) {
        clearInterval(watchdog);
        subscription.unsubscribe();
        reject(new Error(`relay made no progress for ${stallMs / 1000} s: ${JSON.stringify(status)}`));
      }
    }, 1000);
    const subscription = relay.status$.subscribe({
      next: (status) => {
        if (status.relayed < total) return;
        clearInterval(watchdog);
        resolve(status);
        setImmediate(() => subscription.unsubscribe());
      },
      error: (error: unknown) => {
        clearInterval(watchdog);
        reject(error);
      },
      complete: () => {
        clearInterval(watchdog);
        reject(new Error(`relay stopped after ${relay.status().relayed} of ${total}: ${JSON.stringify(relay.status())}`));
      },
    });
  });
}

function natsCpu(pid: number | undefined): number {
  return pid === undefined ? Number.NaN : processCpuMs(pid);
}

function cpuMsSince(before: NodeJS.CpuUsage): number {
  const now = process.cpuUsage(before);
  return (now.user + now.system) / 1000;
}

export default async function relayJob(args: RelayArgs, channel: Channel): Promise<RelayResult> {
  const nats = await connectNats({ servers: args.natsUrl });
  const warnings: string[] = [];
  const logger = { ...silentLogger, warn: (message: string) => warnings.push(message) };
  try {
    if (args.mode === 'bare' || args.mode === 'inbox') {
      const publish = args.mode === 'bare' ? requestPublisher(nats) : inboxPublisher(nats);
      const { payloads } = args;
      let next = 0;
      let acked = 0;
      let duplicates = 0;
      const natsBefore = natsCpu(args.natsPid);
      const cpu = process.cpuUsage();
      const start = nowMs();
      // `window` loops, each with one publish outstanding: exactly `window` in flight.
      const worker = async (): Promise<void> => {
        while (next < args.total) {
          const index = next++;
          const hdrs = headers();
          hdrs.set(relayHeaders.op, payloads.ops[index]!);
          hdrs.set(relayHeaders.table, payloads.table);
          hdrs.set(relayHeaders.txid, payloads.txids[index]!);
          hdrs.set(relayHeaders.changeId, payloads.changeIds[index]!);
          const duplicate = await publish(args.subject, payloads.bodies[index]!, payloads.msgIDs[index]!, hdrs);
          acked += 1;
          if (duplicate) duplicates += 1;
        }
      };
      await Promise.all(Array.from({ length: args.window }, worker));
      const seconds = (nowMs() - start) / 1000;
      const cpuMs = cpuMsSince(cpu);
      const natsCpuMs = natsCpu(args.natsPid) - natsBefore;
      return {
        mode: args.mode,
        relayed: acked,
        duplicates,
        retries: 0,
        seconds,
        rate: acked / seconds,
        startupMs: 0,
        firstMs: 0,
        closeMs: 0,
        cpuMs,
        postgresCpuMs: 0,
        natsCpuMs,
        maxRssMB: process.resourceUsage().maxRSS / 1024,
        warnings,
      };
    }

    const tide = await connectTide(args.url);
    try {
      const options = {
        tables: [args.table],
        consumer: args.consumer,
        nats,
        stream: args.stream,
        subjectPrefix: args.subjectPrefix,
        window: args.window,
        logger,
      };
      if (args.mode === 'live') {
        const relay = await relayToJetStream(tide, options);
        channel.send('ready');
        await Promise.race([channel.receive('stop'), relay.done]);
        const status = relay.status();
        await relay.close();
        return {
          mode: 'live',
          relayed: status.relayed,
          duplicates: status.duplicates,
          retries: status.retries,
          seconds: 0,
          rate: 0,
          startupMs: 0,
          firstMs: 0,
          closeMs: 0,
          cpuMs: 0,
          postgresCpuMs: 0,
          natsCpuMs: 0,
          maxRssMB: process.resourceUsage().maxRSS / 1024,
          warnings,
          ...(status.lastError !== undefined ? { lastError: status.lastError } : {}),
        };
      }

      const postgresBefore = serverCpu(args.postmaster);
      const natsBefore = natsCpu(args.natsPid);
      const cpu = process.cpuUsage();
      const start = nowMs();
      const relay = await relayToJetStream(tide, { ...options, from: 'beginning' });
      const startupMs = nowMs() - start;
      let firstMs = Number.NaN;
      const first = relay.status$.subscribe((status) => {
        if (status.relayed > 0 && Number.isNaN(firstMs)) firstMs = nowMs() - start;
      });
      const status = await relayedAll(relay, args.total);
      const end = nowMs();
      const cpuMs = cpuMsSince(cpu);
      const natsCpuMs = natsCpu(args.natsPid) - natsBefore;
      // Before close(): the Tide's backends still run, so none of their CPU is lost.
      const postgresCpuMs = cpuSince(postgresBefore, serverCpu(args.postmaster));
      first.unsubscribe();
      await relay.close();
      const closeMs = nowMs() - end;
      const seconds = (end - start) / 1000;
      return {
        mode: 'relay',
        relayed: status.relayed,
        duplicates: status.duplicates,
        retries: status.retries,
        seconds,
        rate: status.relayed / seconds,
        startupMs,
        firstMs,
        closeMs,
        cpuMs,
        postgresCpuMs,
        natsCpuMs,
        maxRssMB: process.resourceUsage().maxRSS / 1024,
        warnings,
        ...(status.lastError !== undefined ? { lastError: status.lastError } : {}),
      };
    } finally {
      await tide.close();
    }
  } finally {
    await nats.close();
  }
}
