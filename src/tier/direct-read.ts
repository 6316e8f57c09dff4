/**
 * Direct reads: a blocking fault on a local file store preads the slot on the faulting thread
 * itself, instead of asking the store worker and sleeping until it answers.
 *
 * Why (profiled with `node --cpu-prof` on the tier bench's Zipf reads, 1 GiB space, 128 MiB
 * budget, file store, 2 shared cores): the main thread spent nearly all of the measured phase in
 * ReadRing.waitDone — about 200 us per fault — while the worker's own pread of the page took a
 * few microseconds and the worker was otherwise idle. A fault through the worker costs two
 * cross-thread hand-offs (wake the worker, wake the waiter), each a futex wake plus a
 * scheduling delay that grows with the machine's load, and the polling before each sleep burns
 * the core the other thread needs. The page itself is in the page cache: the same pread on the
 * faulting thread costs what a raw pread costs. Eviction, copying and CLOCK together were a few
 * percent of the profile.
 *
 * What keeps this correct (the worker remains the only writer of the file):
 *   - read-your-writes first: the channel serves a slot whose newest operation is still in the
 *     destage queue from the queue (StoreChannel.readSync), so a direct read only ever sees a
 *     slot whose last write has completed;
 *   - the store's bitmap of written slots is shared (a SharedArrayBuffer): a clear bit reads as
 *     zeros without I/O, exactly as the store answers. The worker sets a bit after the write is
 *     in the file and before the queue entry completes; the queue's completion is an Atomics
 *     store the main thread reads with Atomics, so the bit and the bytes are visible by then;
 *   - the descriptor is this thread's own, opened read-only and checked to be the same file
 *     (device and inode), so it stays valid whatever the worker does with its own, and is closed
 *     with the channel.
 * Async reads (load, readAsync) still go through the worker: they must not block the thread.
 *
 * A read-ahead batch reads each run of consecutive slots with one preadv into its frames
 * (evicting in CLOCK order gives neighbouring pages neighbouring slots, so a sequential scan's
 * batch is usually one run): one system call for the batch instead of one per page.
 */
import { closeSync, fstatSync, openSync, readSync, readvSync } from 'node:fs';
import type { DirectReadSource } from './page-store.js';
import { storeFailed } from './store-guard.js';

export class DirectFileReader {
  /** Pages read from the file (bit set); pages answered as zeros are not counted. */
  reads = 0;
  private fd: number;
  private readonly written: Uint8Array;

  private constructor(
    fd: number,
    private readonly source: DirectReadSource,
    private readonly name: string,
  ) {
    this.fd = fd;
    this.written = new Uint8Array(source.written);
  }

  /**
   * Opens the source's file read-only, or returns undefined when this thread cannot (no /proc,
   * the file replaced meanwhile): the caller then keeps reading through the worker.
   */
  static open(source: DirectReadSource, name: string): DirectFileReader | undefined {
    let fd: number;
    try {
      fd = openSync(source.path, 'r');
    } catch {
      return undefined;
    }
    try {
      const stat = fstatSync(fd);
      if (stat.dev === source.dev && stat.ino === source.ino) return new DirectFileReader(fd, source, name);
    } catch {
      // fall through: not usable
    }
    closeSync(fd);
    return undefined;
  }

  /** Fills dst[offset, offset + pageSize) with slot `slot`'s bytes. Blocks for one pread. */
  read(slot: number, dst: Uint8Array, offset: number, pageSize: number): void {
    if (!this.isWritten(slot)) {
      dst.fill(0, offset, offset + pageSize);
      return;
    }
    const position = this.source.firstByte + slot * pageSize;
    try {
      let done = 0;
      while (done < pageSize) {
        const n = readSync(this.fd, dst, offset + done, pageSize - done, position + done);
        if (n === 0) {
          throw new Error(
            `the file ends at byte ${position + done}, inside the slot (short read past end of file; ` +
              'was the file truncated by something else?)',
          );
        }
        done += n;
      }
    } catch (error) {
      throw storeFailed(this.name, 'read', error, slot);
    }
    this.reads++;
  }

  /**
   * Reads the pages `pick[0..n)` of a batch: page i is slot slots[i] into
   * views[segments[i]][offsets[i], + pageSize). Runs of consecutive written slots take one preadv.
   */
  readBatch(
    slots: Int32Array,
    segments: Int32Array,
    offsets: Float64Array,
    views: Uint8Array[],
    pick: Int32Array,
    n: number,
    pageSize: number,
  ): void {
    let i = 0;
    while (i < n) {
      const first = pick[i]!;
      const slot = slots[first]!;
      let end = i + 1;
      if (this.isWritten(slot)) {
        while (end < n && slots[pick[end]!] === slot + (end - i) && this.isWritten(slots[pick[end]!]!)) end++;
      }
      if (end - i === 1) {
        this.read(slot, views[segments[first]!]!, offsets[first]!, pageSize);
      } else {
        this.readRun(slots, segments, offsets, views, pick, i, end, pageSize);
      }
      i = end;
    }
  }

  /** One preadv for pages pick[from..to), whose slots are consecutive and written. */
  private readRun(
    slots: Int32Array,
    segments: Int32Array,
    offsets: Float64Array,
    views: Uint8Array[],
    pick: Int32Array,
    from: number,
    to: number,
    pageSize: number,
  ): void {
    // One view per page of the run: preadv needs its destinations as buffers (read-ahead only,
    // never the resident path).
    const buffers: Uint8Array[] = [];
    for (let k = from; k < to; k++) {
      const at = pick[k]!;
      const offset = offsets[at]!;
      buffers.push(views[segments[at]!]!.subarray(offset, offset + pageSize));
    }
    const slot = slots[pick[from]!]!;
    let got: number;
    try {
      got = readvSync(this.fd, buffers, this.source.firstByte + slot * pageSize);
    } catch (error) {
      throw storeFailed(this.name, 'read', error, slot);
    }
    // A short preadv (a signal, or the file cut short behind the store): finish page by page,
    // which reports a real end of file as the single read does.
    const whole = Math.floor(got / pageSize);
    this.reads += whole;
    for (let k = from + whole; k < to; k++) {
      const at = pick[k]!;
      this.read(slots[at]!, views[segments[at]!]!, offsets[at]!, pageSize);
    }
  }

  private isWritten(slot: number): boolean {
    return (Atomics.load(this.written, slot >>> 3) & (1 << (slot & 7))) !== 0;
  }

  close(): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    try {
      closeSync(fd);
    } catch {
      // Closing a read-only descriptor loses nothing; the channel is going away regardless.
    }
  }
}
