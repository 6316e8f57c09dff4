/**
 * Progress bars for the CLI's long work (rebuilds, migrations, heap checks): bytes done of a
 * total with the rate and the time left, drawn by cli-progress. Only on a terminal: when
 * stderr is a pipe or a file (scripts, CI logs) nothing is drawn, so output stays clean and the
 * final one-line summary each command prints is all that is written.
 */
import cliProgress from 'cli-progress';
import { formatSize } from '../size.js';

export interface ProgressBar {
  /** Sets the bytes done (and the total, if it changed). */
  update(done: number, total?: number): void;
  /** Removes the bar (call once, also on failure). */
  stop(): void;
}

const SILENT: ProgressBar = { update: () => undefined, stop: () => undefined };

/** Whether bars are drawn: stderr is a terminal and MEMFABRIC_NO_PROGRESS is not set. */
export function progressWanted(stream: NodeJS.WriteStream = process.stderr): boolean {
  return stream.isTTY === true && !process.env.MEMFABRIC_NO_PROGRESS;
}

/** A bar titled `label` over `total` bytes, or a silent stand-in off a terminal. */
export function byteProgress(
  label: string,
  total: number,
  stream: NodeJS.WriteStream = process.stderr,
): ProgressBar {
  if (!progressWanted(stream)) return SILENT;
  const started = performance.now();
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: `${label} [{bar}] {percentage}% | {doneText} of {totalText} | {rateText}/s | ETA {eta_formatted}`,
      hideCursor: true,
      clearOnComplete: true,
      etaBuffer: 20,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  const fields = (done: number, all: number) => {
    const seconds = Math.max((performance.now() - started) / 1000, 1e-3);
    return {
      doneText: formatSize(done),
      totalText: formatSize(all),
      rateText: formatSize(Math.round(done / seconds)),
    };
  };
  let currentTotal = total;
  bar.start(total, 0, fields(0, total));
  return {
    update(done: number, newTotal?: number): void {
      if (newTotal !== undefined && newTotal !== currentTotal) {
        currentTotal = newTotal;
        bar.setTotal(newTotal);
      }
      bar.update(done, fields(done, currentTotal));
    },
    stop(): void {
      bar.stop();
    },
  };
}
