/**
 * Request latency by command, as fixed-bucket histograms in typed arrays: recording one request
 * is a clock read and a short scan over the bounds, with no allocation (prom-client's own
 * observe() builds a label hash per call, too much for the data path). Readers (metrics, the
 * dashboard) copy the counts out when they need them.
 *
 * A request's latency runs from the chunk of input that completed its header being handed to the
 * server to its reply being queued (transmission.ts times requests per batch of work): a WRITE's
 * includes receiving its payload, a FLUSH's (and a FUA write's) waiting for the flush, any
 * request's its wait for the global buffer budget and for the earlier requests of its batch.
 */
import { CMD_COUNT } from '../protocol/constants.js';

/** Upper bounds of the buckets, in seconds (the last bucket, +Inf, is implicit). */
export const LATENCY_BOUNDS_SECONDS: readonly number[] = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
  0.5, 1, 2.5, 5, 10,
];

/** The same bounds in milliseconds (what performance.now() differences are). */
const BOUNDS_MS = new Float64Array(LATENCY_BOUNDS_SECONDS.map((s) => s * 1000));
/** Buckets per command: one per bound, and +Inf. */
const SLOTS = BOUNDS_MS.length + 1;

export class RequestLatency {
  /** Per command (index = command number, the last slot unknown commands), per bucket: counts (not cumulative). */
  readonly counts = new Float64Array((CMD_COUNT + 1) * SLOTS);
  /** Per command: the sum of latencies, in milliseconds. */
  readonly sumsMs = new Float64Array(CMD_COUNT + 1);

  /** Records one request of command `type` that took `ms` milliseconds. */
  observe(type: number, ms: number): void {
    this.observeCount(type, ms, 1);
  }

  /** Records `count` requests of command `type` that each took `ms` milliseconds. */
  observeCount(type: number, ms: number, count: number): void {
    const command = type < CMD_COUNT ? type : CMD_COUNT;
    let bucket = 0;
    while (bucket < BOUNDS_MS.length && ms > BOUNDS_MS[bucket]!) bucket++;
    this.counts[command * SLOTS + bucket] += count;
    this.sumsMs[command] += ms * count;
  }

  /** The per-bucket counts of one command (a copy; the last entry is the +Inf bucket). */
  bucketsOf(type: number): number[] {
    const start = (type < CMD_COUNT ? type : CMD_COUNT) * SLOTS;
    return Array.from(this.counts.subarray(start, start + SLOTS));
  }
}
