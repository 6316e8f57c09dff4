/**
 * A PageSink that applies pages to another address space in this process, through the real
 * batch encoding (PageBatchWriter, then readPageBatch via applyPageBatch), with hooks where a
 * test makes the program write between the engine's steps.
 */
import { AddressSpace, FramePool } from '../../src/index.js';
import type { PageSink, SinkMeasure } from '../../src/migrate/engine.js';
import { applyPageBatch } from '../../src/migrate/apply.js';
import {
  FRAME_HEADER_BYTES,
  PAGE_DATA,
  PAGE_HOLE,
  PAGE_ZERO,
  PageBatchWriter,
} from '../../src/migrate/wire.js';

export interface MemorySinkOptions {
  /** Data pages per batch (small batches give a writer more chances to interleave). */
  batchPages?: number;
  /** Called at every send, before the batch is applied: the test's "program" writes here. */
  onSend?: () => void;
  /** Called at every sync. */
  onSync?: () => void;
  /** Reported by sync() as the sink's measure: bytes per ms (a synthetic bandwidth). */
  bytesPerMs?: number;
  /** Make the next send/sync reject (a transport failure). */
  failAt?: { sends?: number };
}

export class MemorySink implements PageSink {
  readonly pageSize: number;
  readonly target: AddressSpace;
  bytesSent = 0;
  sends = 0;
  syncs = 0;
  dataPages = 0;
  private readonly writer: PageBatchWriter;
  private sentSinceSync = 0;

  constructor(
    source: AddressSpace,
    private readonly options: MemorySinkOptions = {},
  ) {
    this.pageSize = source.pageSize;
    const pool = new FramePool({
      pageSize: source.pageSize,
      capacity: source.pageSize * 16,
      maxCapacity: '1GiB',
    });
    this.target = new AddressSpace(pool, { size: source.size });
    this.writer = new PageBatchWriter({ pageSize: this.pageSize, maxDataPages: options.batchPages ?? 8 });
  }

  data(page: number, bytes: Uint8Array): boolean {
    const ok = this.writer.put(page, PAGE_DATA, bytes);
    if (ok) this.dataPages++;
    return ok;
  }

  zero(page: number): boolean {
    return this.writer.put(page, PAGE_ZERO);
  }

  hole(page: number): boolean {
    return this.writer.put(page, PAGE_HOLE);
  }

  async send(): Promise<void> {
    this.sends++;
    if (this.options.failAt?.sends !== undefined && this.sends >= this.options.failAt.sends) {
      throw new Error('transport failed');
    }
    this.options.onSend?.();
    if (this.writer.isEmpty) return;
    const frame = this.writer.seal(3);
    this.bytesSent += frame.length;
    this.sentSinceSync += frame.length;
    applyPageBatch(this.target, frame.subarray(FRAME_HEADER_BYTES));
    this.writer.reset();
    // Like a real transport: the program gets the event loop between batches.
    await new Promise((resolve) => setImmediate(resolve));
  }

  async sync(): Promise<SinkMeasure | void> {
    await this.send();
    this.syncs++;
    this.options.onSync?.();
    const bytes = this.sentSinceSync;
    this.sentSinceSync = 0;
    if (this.options.bytesPerMs !== undefined)
      return { bytes, ms: Math.max(bytes / this.options.bytesPerMs, 1e-3) };
    return undefined;
  }
}

/** Every byte of `a` equals `b`'s, and holes are holes on both (compared page by page). */
export function spacesEqual(a: AddressSpace, b: AddressSpace): string | undefined {
  const pa = new Uint8Array(a.pageSize);
  const pb = new Uint8Array(b.pageSize);
  for (let page = 0; page < a.pages; page++) {
    const offset = page * a.pageSize;
    const n = Math.min(a.pageSize, a.size - offset);
    a.read(offset, pa.subarray(0, n));
    b.read(offset, pb.subarray(0, n));
    if (Buffer.compare(pa.subarray(0, n), pb.subarray(0, n)) !== 0) return `page ${page} differs`;
  }
  return undefined;
}
