/**
 * The lockstep-standby protocol (message types 64–95 of connection.ts), shared by the primary's
 * Replica (replica.ts) and the Standby (standby.ts).
 *
 *   primary → standby
 *     HELLO            JSON { protocol, version, kind: 'space' | 'heap', size, pageSize, epochMs }
 *     BRINGUP_PAGES    prefix f64 round, then a page batch: applied at once (the standby holds
 *                      no consistent state until the first epoch is complete anyway)
 *     EPOCH_PAGES      prefix f64 epoch, u32 batch index, u32 reserved, then a page batch:
 *                      buffered, never applied on its own
 *     EPOCH_COMMIT     f64 epoch, u32 batches, u32 reserved, f64 pages: the epoch is complete;
 *                      the standby checks the counts, applies it whole and acknowledges it
 *     HEARTBEAT        empty, sent when nothing else was for a while (both ways)
 *     BYE              empty: the primary detaches on purpose; the standby does not take over
 *   standby → primary
 *     WELCOME          JSON { heartbeatTimeoutMs }: ready to receive
 *     EPOCH_ACK        f64 epoch: applied (every epoch up to it is on the standby)
 *
 * Epochs are numbered from 1 in the order they are cut; the first one completes the bring-up.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import { FRAME_HEADER_BYTES, sealFrame } from './wire.js';

export const STANDBY_PROTOCOL = 'memfabric-standby';
export const STANDBY_PROTOCOL_VERSION = 1;

export const MSG_HELLO = 64;
export const MSG_WELCOME = 65;
export const MSG_BRINGUP_PAGES = 66;
export const MSG_EPOCH_PAGES = 67;
export const MSG_EPOCH_COMMIT = 68;
export const MSG_EPOCH_ACK = 69;
export const MSG_HEARTBEAT = 70;
export const MSG_BYE = 71;

export const BRINGUP_PREFIX_BYTES = 8;
export const EPOCH_PREFIX_BYTES = 16;
export const COMMIT_BYTES = 24;

export const EPOCH_MS_DEFAULT = 25;
export const HEARTBEAT_TIMEOUT_DEFAULT_MS = 1000;
export const LAG_TIMEOUT_DEFAULT_MS = 10_000;

export interface Hello {
  protocol: string;
  version: number;
  kind: 'space' | 'heap';
  size: number;
  pageSize: number;
  epochMs: number;
  heartbeatTimeoutMs: number;
}

/** A frame of `type` with a payload of `bytes` bytes written by `fill`, in a fresh buffer. */
export function smallFrame(type: number, bytes: number, fill: (payload: Buffer) => void): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + bytes);
  fill(frame.subarray(FRAME_HEADER_BYTES));
  return sealFrame(frame, type, bytes);
}

export function encodeCommit(epoch: number, batches: number, pages: number): Buffer {
  return smallFrame(MSG_EPOCH_COMMIT, COMMIT_BYTES, (p) => {
    p.writeDoubleLE(epoch, 0);
    p.writeUInt32LE(batches, 8);
    p.writeUInt32LE(0, 12);
    p.writeDoubleLE(pages, 16);
  });
}

export function encodeAck(epoch: number): Buffer {
  return smallFrame(MSG_EPOCH_ACK, 8, (p) => p.writeDoubleLE(epoch, 0));
}

export function standbyLost(reason: string): MemfabricError {
  return new MemfabricError(
    ErrorCodes.STANDBY_LOST,
    `the standby is gone (${reason}); writes are no longer replicated: bring a standby up and call replicate() again`,
  );
}

/**
 * A ring of the last `capacity` samples (latencies in ms, sizes), for p50/p99 in stats()
 * without keeping every sample or allocating per sample.
 */
export class SampleRing {
  private readonly values: Float64Array;
  private count = 0;
  private total = 0;
  private sum = 0;
  private maximum = 0;

  constructor(capacity = 1024) {
    this.values = new Float64Array(capacity);
  }

  add(value: number): void {
    this.values[this.count % this.values.length] = value;
    this.count++;
    this.total++;
    this.sum += value;
    if (value > this.maximum) this.maximum = value;
  }

  /** Samples taken so far (all, not only those still in the ring). */
  get samples(): number {
    return this.total;
  }

  summary(): LatencySummary {
    const n = Math.min(this.count, this.values.length);
    const sorted = this.values.slice(0, n).sort();
    const at = (fraction: number): number =>
      n === 0 ? 0 : sorted[Math.min(n - 1, Math.max(0, Math.ceil(fraction * n) - 1))]!;
    return {
      count: this.total,
      mean: this.total === 0 ? 0 : this.sum / this.total,
      p50: at(0.5),
      p99: at(0.99),
      max: this.maximum,
    };
  }
}

/** A distribution over the recent samples: p50/p99 of the last 1024, mean and max of all. */
export interface LatencySummary {
  count: number;
  mean: number;
  p50: number;
  p99: number;
  max: number;
}
