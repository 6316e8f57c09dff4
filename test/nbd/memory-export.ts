/**
 * A test-only NbdExport over a plain Uint8Array, with a page-granular allocation bitmap so
 * that holes are real: a trimmed (or hole-punched) whole page reads as zeros and reports
 * HOLE|ZERO in block status, an allocated page reports 0.
 *
 * Invariant: allocated[p] === 0 implies bytes of page p are all zero.
 */
import { MemfabricError, ErrorCodes } from '../../src/errors.js';
import type { NbdExport, NbdExportDirectory } from '../../src/nbd/index.js';
import { STATE_HOLE, STATE_ZERO } from '../../src/nbd/protocol/constants.js';

export class MemoryExport implements NbdExport {
  readonly data: Uint8Array;
  readonly allocated: Uint8Array;
  flushes = 0;
  /** When set, the next data call throws this (then it is cleared): fault injection. */
  failNext: Error | undefined;

  constructor(
    readonly size: number,
    readonly blockSize = 4096,
    readonly readOnly = false,
    readonly description = '',
  ) {
    this.data = new Uint8Array(size);
    this.allocated = new Uint8Array(Math.ceil(size / blockSize));
  }

  read(offset: number, dst: Uint8Array): void {
    this.maybeFail();
    // Holes are answered with zeros without touching `data`, like a sparse store (and like
    // nbdkit's memory plugin): first touches of a large untouched array fault page by page.
    const bs = this.blockSize;
    const end = offset + dst.length;
    let at = offset;
    while (at < end) {
      const page = Math.floor(at / bs);
      const runEnd = Math.min(end, (page + 1) * bs);
      if (this.allocated[page] === 0) dst.fill(0, at - offset, runEnd - offset);
      else dst.set(this.data.subarray(at, runEnd), at - offset);
      at = runEnd;
    }
  }

  write(offset: number, src: Uint8Array): void {
    this.maybeFail();
    if (this.readOnly) throw new MemfabricError(ErrorCodes.READ_ONLY, 'read-only');
    this.data.set(src, offset);
    this.allocated.fill(
      1,
      Math.floor(offset / this.blockSize),
      Math.ceil((offset + src.length) / this.blockSize),
    );
  }

  trim(offset: number, length: number): void {
    this.maybeFail();
    this.zero(offset, length, true);
  }

  writeZeroes(offset: number, length: number, mayPunchHole: boolean): void {
    this.maybeFail();
    this.zero(offset, length, mayPunchHole);
  }

  async flush(): Promise<void> {
    this.flushes++;
    await Promise.resolve();
  }

  blockStatus(offset: number, length: number, emit: (length: number, flags: number) => void): number {
    this.maybeFail();
    const end = offset + length;
    let at = offset;
    let emitted = 0;
    while (at < end) {
      const page = Math.floor(at / this.blockSize);
      const hole = this.allocated[page] === 0;
      let runEnd = Math.min(end, (page + 1) * this.blockSize);
      let next = page + 1;
      while (runEnd < end && (this.allocated[next] === 0) === hole) {
        runEnd = Math.min(end, (next + 1) * this.blockSize);
        next++;
      }
      emit(runEnd - at, hole ? STATE_HOLE | STATE_ZERO : 0);
      emitted++;
      at = runEnd;
    }
    return emitted;
  }

  private zero(offset: number, length: number, punch: boolean): void {
    const end = offset + length;
    this.data.fill(0, offset, end);
    const bs = this.blockSize;
    if (punch) {
      // Only whole pages become holes; partial pages stay allocated (and zeroed).
      const first = Math.ceil(offset / bs);
      const last = end === this.size ? Math.ceil(end / bs) : Math.floor(end / bs);
      if (last > first) this.allocated.fill(0, first, last);
    } else {
      this.allocated.fill(1, Math.floor(offset / bs), Math.ceil(end / bs));
    }
  }

  private maybeFail(): void {
    const err = this.failNext;
    if (err !== undefined) {
      this.failNext = undefined;
      throw err;
    }
  }
}

export class MemoryDirectory implements NbdExportDirectory {
  readonly exports = new Map<string, MemoryExport>();
  readonly attached = new Map<string, number>();

  add(name: string, exp: MemoryExport): MemoryExport {
    this.exports.set(name, exp);
    return exp;
  }

  get(name: string): NbdExport | undefined {
    return this.exports.get(name);
  }

  list(): Array<{ name: string; description: string }> {
    return [...this.exports].map(([name, e]) => ({ name, description: e.description }));
  }

  onAttach(name: string, delta: 1 | -1): void {
    this.attached.set(name, (this.attached.get(name) ?? 0) + delta);
  }
}

const MiB = 1024 * 1024;

/**
 * The standard test directory: '' (default, 64 MiB), 'small' (1 MiB, 512-byte blocks), 'ro'
 * (read-only, 1 MiB, filled with a known pattern).
 */
export function testDirectory(defaultBytes = 64 * MiB): MemoryDirectory {
  const dir = new MemoryDirectory();
  dir.add('', new MemoryExport(defaultBytes, 4096, false, 'default test export'));
  dir.add('small', new MemoryExport(1 * MiB, 512, false, 'small export'));
  const ro = dir.add('ro', new MemoryExport(1 * MiB, 4096, true, 'read-only export'));
  for (let i = 0; i < ro.size; i++) ro.data[i] = (i * 7 + 3) & 0xff;
  ro.allocated.fill(1);
  return dir;
}
