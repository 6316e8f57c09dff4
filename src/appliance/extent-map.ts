/**
 * The extent map of a file-backed region: the runs of pages of its image that may hold data.
 * Node has no SEEK_DATA, so without it a loader must read the whole virtual size (1 PiB); with
 * it, only these runs. It may be a superset (pages in it are checked for zeros on load) and
 * must never miss a page that holds data: file-backing.ts grows it, durably, before it writes
 * data to new pages, and shrinks it only after the zeros that allow it are synced.
 *
 * In memory: sorted, disjoint, non-adjacent runs [first page, page count) in two number
 * arrays. On disk (`NAME.extents`), little-endian:
 *
 *   0   8  magic "MFEXTMAP"
 *   8   4  format version (1)
 *   12  4  page size
 *   16  8  run count
 *   24  8  xxh64 of the run bytes
 *   32  16 per run: first page (u64), page count (u64)
 */
import { xxh64 } from '@node-rs/xxhash';

export const EXTENT_MAP_MAGIC = 'MFEXTMAP';
export const EXTENT_MAP_VERSION = 1;
const HEADER_BYTES = 32;
const RUN_BYTES = 16;

export class PageRuns {
  private constructor(
    private readonly firsts: number[],
    private readonly counts: number[],
  ) {}

  static empty(): PageRuns {
    return new PageRuns([], []);
  }

  /** Runs covering `pages` (ascending, distinct). */
  static fromPages(pages: ArrayLike<number>): PageRuns {
    const builder = PageRuns.builder();
    for (let i = 0; i < pages.length; i++) builder.add(pages[i]!);
    return builder.build();
  }

  /** Collects ascending pages one at a time (no array of every page). */
  static builder(): { add(page: number): void; build(): PageRuns } {
    const firsts: number[] = [];
    const counts: number[] = [];
    return {
      add(page: number): void {
        const last = firsts.length - 1;
        if (last >= 0 && firsts[last]! + counts[last]! === page) counts[last]!++;
        else {
          firsts.push(page);
          counts.push(1);
        }
      },
      build: () => new PageRuns(firsts, counts),
    };
  }

  /** One run [first, first + count). */
  static range(first: number, count: number): PageRuns {
    return count > 0 ? new PageRuns([first], [count]) : PageRuns.empty();
  }

  get runCount(): number {
    return this.firsts.length;
  }

  get pageCount(): number {
    let total = 0;
    for (const count of this.counts) total += count;
    return total;
  }

  forEach(visit: (first: number, count: number) => void): void {
    for (let i = 0; i < this.firsts.length; i++) visit(this.firsts[i]!, this.counts[i]!);
  }

  /** True when every page of `pages` (ascending) lies in a run. */
  covers(pages: ArrayLike<number>): boolean {
    let run = 0;
    for (let i = 0; i < pages.length; i++) {
      const page = pages[i]!;
      while (run < this.firsts.length && this.firsts[run]! + this.counts[run]! <= page) run++;
      if (run === this.firsts.length || this.firsts[run]! > page) return false;
    }
    return true;
  }

  /** These runs plus the pages of `pages` (ascending). */
  withPages(pages: ArrayLike<number>): PageRuns {
    return this.merge(PageRuns.fromPages(pages), true);
  }

  /** These runs minus the pages of `pages` (ascending). */
  withoutPages(pages: ArrayLike<number>): PageRuns {
    return this.merge(PageRuns.fromPages(pages), false);
  }

  equals(other: PageRuns): boolean {
    if (other.firsts.length !== this.firsts.length) return false;
    for (let i = 0; i < this.firsts.length; i++) {
      if (other.firsts[i] !== this.firsts[i] || other.counts[i] !== this.counts[i]) return false;
    }
    return true;
  }

  encode(pageSize: number): Buffer {
    const runs = this.firsts.length;
    const out = Buffer.alloc(HEADER_BYTES + runs * RUN_BYTES);
    out.write(EXTENT_MAP_MAGIC, 0, 'latin1');
    out.writeUInt32LE(EXTENT_MAP_VERSION, 8);
    out.writeUInt32LE(pageSize, 12);
    out.writeBigUInt64LE(BigInt(runs), 16);
    for (let i = 0; i < runs; i++) {
      out.writeBigUInt64LE(BigInt(this.firsts[i]!), HEADER_BYTES + i * RUN_BYTES);
      out.writeBigUInt64LE(BigInt(this.counts[i]!), HEADER_BYTES + i * RUN_BYTES + 8);
    }
    out.writeBigUInt64LE(xxh64(out.subarray(HEADER_BYTES)), 24);
    return out;
  }

  /** Parses a map file; a string says why it is unusable (the caller reads the whole image). */
  static decode(bytes: Buffer, pageSize: number, pages: number): PageRuns | string {
    if (bytes.length < HEADER_BYTES || bytes.toString('latin1', 0, 8) !== EXTENT_MAP_MAGIC) {
      return 'not an extent map (bad magic)';
    }
    if (bytes.readUInt32LE(8) !== EXTENT_MAP_VERSION) return `unknown version ${bytes.readUInt32LE(8)}`;
    if (bytes.readUInt32LE(12) !== pageSize) return `written for ${bytes.readUInt32LE(12)}-byte pages`;
    const runs = Number(bytes.readBigUInt64LE(16));
    if (bytes.length !== HEADER_BYTES + runs * RUN_BYTES) return 'truncated';
    if (xxh64(bytes.subarray(HEADER_BYTES)) !== bytes.readBigUInt64LE(24)) return 'checksum mismatch';
    const firsts: number[] = [];
    const counts: number[] = [];
    let end = -1;
    for (let i = 0; i < runs; i++) {
      const first = Number(bytes.readBigUInt64LE(HEADER_BYTES + i * RUN_BYTES));
      const count = Number(bytes.readBigUInt64LE(HEADER_BYTES + i * RUN_BYTES + 8));
      if (count < 1 || first <= end || first + count > pages) return `run ${i} is out of order or range`;
      firsts.push(first);
      counts.push(count);
      end = first + count;
    }
    return new PageRuns(firsts, counts);
  }

  /** Union (`add`) or difference (`!add`) of two run lists, by a walk over page boundaries. */
  private merge(other: PageRuns, add: boolean): PageRuns {
    const firsts: number[] = [];
    const counts: number[] = [];
    const push = (first: number, end: number): void => {
      if (end <= first) return;
      const last = firsts.length - 1;
      if (last >= 0 && firsts[last]! + counts[last]! >= first) {
        counts[last] = Math.max(firsts[last]! + counts[last]!, end) - firsts[last]!;
      } else {
        firsts.push(first);
        counts.push(end - first);
      }
    };
    if (add) {
      let i = 0;
      let j = 0;
      while (i < this.firsts.length || j < other.firsts.length) {
        const takeThis =
          j === other.firsts.length || (i < this.firsts.length && this.firsts[i]! <= other.firsts[j]!);
        if (takeThis) {
          push(this.firsts[i]!, this.firsts[i]! + this.counts[i]!);
          i++;
        } else {
          push(other.firsts[j]!, other.firsts[j]! + other.counts[j]!);
          j++;
        }
      }
    } else {
      let j = 0;
      for (let i = 0; i < this.firsts.length; i++) {
        let at = this.firsts[i]!;
        const end = at + this.counts[i]!;
        while (j < other.firsts.length && other.firsts[j]! + other.counts[j]! <= at) j++;
        let k = j;
        while (at < end && k < other.firsts.length && other.firsts[k]! < end) {
          push(at, other.firsts[k]!);
          at = Math.max(at, other.firsts[k]! + other.counts[k]!);
          k++;
        }
        push(at, end);
      }
    }
    return new PageRuns(firsts, counts);
  }
}
