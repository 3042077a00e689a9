// CPU time of a server backend, read from /proc: a measure of the work a statement costs
// the server that, unlike wall time, other processes competing for the CPU barely move.
// Works when the server runs on this machine (the embedded one always does), else NaN.
import { readdirSync, readFileSync } from 'node:fs';
import type pg from 'pg';

const ticksPerSecond = 100; // USER_HZ on Linux

/** utime + stime of a process in ms, or NaN if it cannot be read. */
export function processCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond;
  } catch {
    return Number.NaN;
  }
}

export async function backendPid(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  return rows[0]!.pid;
}

/** The postmaster's pid, from the data directory. */
export function postmasterPid(dataDir: string): number {
  return Number(readFileSync(`${dataDir}/postmaster.pid`, 'utf8').split('\n')[0]);
}

/** CPU ms used so far by each process of the server: the postmaster and its children. */
export type CpuSnapshot = Map<number, number>;

export function serverCpu(postmaster: number): CpuSnapshot {
  const snapshot: CpuSnapshot = new Map([[postmaster, processCpuMs(postmaster)]]);
  for (const entry of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) !== postmaster) continue;
      snapshot.set(Number(entry), ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond);
    } catch {
      // The process ended while we looked.
    }
  }
  return snapshot;
}

/**
 * Server CPU ms spent between two snapshots (backends, WAL writer, checkpointer,
 * autovacuum, ...). A process started in between counts from zero; one that exited in
 * between is lost, so measure spans in which the connections stay open.
 */
export function cpuSince(before: CpuSnapshot, after: CpuSnapshot): number {
  let total = 0;
  for (const [pid, ms] of after) total += ms - (before.get(pid) ?? 0);
  return total;
}
