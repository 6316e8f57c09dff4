/**
 * A one-line progress bar for a terminal: `[#########-----------]  45%  round 3  12,345 pages
 * 3,210 pages/s  ETA 4s`, redrawn in place with a carriage return. Drawn only when the stream
 * is a TTY (a log file or a pipe gets the command's ordinary lines and nothing else), and
 * cleared before any other line is printed so the two never interleave.
 *
 * A dependency like cli-progress would do the same; this is the dozen lines the CLI needs.
 */

export interface ProgressFigures {
  /** Units done and the total of the current stage (the total may grow, as a round's does). */
  done: number;
  total: number;
  /** Units per second, measured; undefined until two samples exist. */
  ratePerSec: number | undefined;
  /** Label before the counts ("round 3"). */
  label: string;
  unit: string;
}

const BAR_WIDTH = 24;

/** The progress line's text (pure, for tests). */
export function renderProgress(figures: ProgressFigures, barWidth = BAR_WIDTH): string {
  const fraction = figures.total > 0 ? Math.min(1, Math.max(0, figures.done / figures.total)) : 0;
  const filled = Math.round(fraction * barWidth);
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}]`;
  const percent = `${Math.floor(fraction * 100)}%`.padStart(4);
  const parts = [
    bar,
    percent,
    figures.label,
    `${figures.done.toLocaleString('en-US')}/${figures.total.toLocaleString('en-US')} ${figures.unit}`,
  ];
  if (figures.ratePerSec !== undefined && figures.ratePerSec > 0) {
    parts.push(`${Math.round(figures.ratePerSec).toLocaleString('en-US')} ${figures.unit}/s`);
    parts.push(`ETA ${formatEta((figures.total - figures.done) / figures.ratePerSec)}`);
  }
  return parts.join('  ');
}

export function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  if (seconds < 60) return `${Math.ceil(seconds)}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${String(Math.ceil(seconds % 60)).padStart(2, '0')}s`;
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, '0')}m`;
}

/** Rate of a growing counter, from its last two samples a while apart. */
export class RateMeter {
  private lastValue: number | undefined;
  private lastTime = 0;
  rate: number | undefined;

  sample(value: number, now = performance.now()): number | undefined {
    if (this.lastValue !== undefined && now > this.lastTime) {
      const instant = ((value - this.lastValue) / (now - this.lastTime)) * 1000;
      // Smoothed, so one slow poll does not swing the ETA.
      this.rate = this.rate === undefined ? instant : this.rate * 0.7 + instant * 0.3;
    }
    this.lastValue = value;
    this.lastTime = now;
    return this.rate;
  }
}

export class ProgressLine {
  private shown = false;

  constructor(private readonly stream: NodeJS.WriteStream = process.stderr) {}

  get enabled(): boolean {
    return this.stream.isTTY === true;
  }

  update(figures: ProgressFigures): void {
    if (!this.enabled) return;
    const columns = this.stream.columns ?? 80;
    const text = renderProgress(figures).slice(0, Math.max(10, columns - 1));
    this.stream.write(`\r${text}\u001b[K`);
    this.shown = true;
  }

  /** Erases the line (before printing anything else, and at the end). */
  clear(): void {
    if (!this.shown) return;
    this.stream.write('\r\u001b[K');
    this.shown = false;
  }
}
