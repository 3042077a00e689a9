// Summarizes a V8 .cpuprofile (from `node --cpu-prof`, or BENCH_CPU_PROF=<dir> npm run bench)
// by self time per function and by total time per source file.
// Usage: npx tsx bench/tools/cpuprofile-top.ts <file.cpuprofile>... [top=25] (the largest file is read)
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const args = process.argv.slice(2);
const files = args.filter((arg) => arg.endsWith('.cpuprofile'));
const top = Number(args.find((arg) => /^[0-9]+$/.test(arg)) ?? 25);
if (files.length === 0) {
  console.error('usage: cpuprofile-top <file.cpuprofile>... [top]');
  process.exit(2);
}
// The main thread's profile is the largest (tsx also profiles its loader thread).
const file = files.map((path) => ({ path, size: readFileSync(path).length })).sort((a, b) => b.size - a.size)[0]!.path;
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const selfTime = new Map<number, number>();
profile.samples.forEach((id, index) => selfTime.set(id, (selfTime.get(id) ?? 0) + (profile.timeDeltas[index] ?? 0)));
const total = [...selfTime.values()].reduce((a, b) => a + b, 0);

const shortUrl = (url: string) => url.replace(/^file:\/\//, '').replace(/.*\/node_modules\//, 'nm:').replace(/.*\/work\/main\//, '');
const label = (node: Node) => `${node.callFrame.functionName || '(anonymous)'} ${shortUrl(node.callFrame.url)}:${node.callFrame.lineNumber + 1}`;

const selfByLabel = new Map<string, number>();
for (const [id, time] of selfTime) {
  const node = byId.get(id)!;
  selfByLabel.set(label(node), (selfByLabel.get(label(node)) ?? 0) + time);
}
console.log(`total sampled ${(total / 1000).toFixed(0)} ms`);
console.log('\nself time by function:');
for (const [name, time] of [...selfByLabel].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`${((100 * time) / total).toFixed(1).padStart(5)}%  ${(time / 1000).toFixed(0).padStart(6)} ms  ${name}`);
}

// Inclusive time per function (each sample counted once per distinct function on its stack).
const parent = new Map<number, number>();
for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
const inclusive = new Map<string, number>();
for (const [id, time] of selfTime) {
  const seen = new Set<string>();
  for (let current: number | undefined = id; current !== undefined; current = parent.get(current)) {
    const name = label(byId.get(current)!);
    if (seen.has(name)) continue;
    seen.add(name);
    inclusive.set(name, (inclusive.get(name) ?? 0) + time);
  }
}
console.log('\ninclusive time by function:');
for (const [name, time] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`${((100 * time) / total).toFixed(1).padStart(5)}%  ${(time / 1000).toFixed(0).padStart(6)} ms  ${name}`);
}
