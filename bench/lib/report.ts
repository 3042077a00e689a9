// The result rows, the printed table and the JSON file.
import type { Summary } from './stats.js';
import { summarize } from './stats.js';

/** A pgtide figure and its baseline from the same run. */
export interface Pair {
  readonly pgtide: Summary;
  readonly baseline: Summary;
  /** pgtide / baseline per run (runs are paired: measured back to back). */
  readonly ratio: Summary;
}

export function pairOf(pgtide: Summary, baseline: Summary): Pair {
  const ratios = pgtide.runs.map((value, index) => value / baseline.runs[index]!);
  return { pgtide, baseline, ratio: summarize(ratios) };
}

export interface Figure {
  /** What is measured, e.g. "inserts/s". */
  readonly metric: string;
  readonly unit: string;
  readonly pgtide: Summary;
  readonly baselines: ReadonlyArray<{ readonly name: string; readonly value: Summary; readonly ratio: Summary }>;
}

export interface Row {
  readonly id: string;
  readonly scenario: string;
  readonly figures: readonly Figure[];
  readonly target: string;
  /** Whether the target is met; undefined when the row is informational. */
  readonly met: boolean | undefined;
  readonly notes?: readonly string[];
  readonly extra?: Record<string, unknown>;
}

export function formatNumber(value: number, unit: string): string {
  if (!Number.isFinite(value)) return 'n/a';
  if (unit === 'ms') return value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0);
  if (unit === 'MB') return value.toFixed(0);
  if (unit === 'x') return `${value.toFixed(2)}x`;
  if (Math.abs(value) >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (Math.abs(value) >= 1e4) return `${(value / 1e3).toFixed(0)}k`;
  if (Math.abs(value) >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return value.toFixed(value < 10 ? 2 : 0);
}

export function formatSummary(summary: Summary, unit: string): string {
  const main = formatNumber(summary.median, unit);
  if (summary.runs.length < 2) return `${main} ${unit === 'x' ? '' : unit}`.trim();
  return `${main} (${formatNumber(summary.min, unit)}–${formatNumber(summary.max, unit)})${unit === 'x' ? '' : ` ${unit}`}`;
}

/** The table as Markdown: one line per figure. */
export function renderTable(rows: readonly Row[]): string {
  const header = ['scenario', 'metric', 'pgtide median (min–max)', 'baseline: median (min–max)', 'ratio (min–max)', 'target', 'met'];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const row of rows) {
    row.figures.forEach((figure, index) => {
      const baselines = figure.baselines.length === 0 ? ['—'] : figure.baselines.map((b) => `${b.name}: ${formatSummary(b.value, figure.unit)}`);
      const ratios = figure.baselines.length === 0 ? ['—'] : figure.baselines.map((b) => formatSummary(b.ratio, 'x'));
      lines.push(
        `| ${index === 0 ? row.scenario : ''} | ${figure.metric} | ${formatSummary(figure.pgtide, figure.unit)} | ${baselines.join('<br>')} | ${ratios.join('<br>')} | ${index === 0 ? row.target : ''} | ${index === 0 ? (row.met === undefined ? 'info' : row.met ? 'yes' : '**no**') : ''} |`,
      );
    });
  }
  return lines.join('\n');
}
