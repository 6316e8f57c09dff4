/**
 * The QEMU migration-test pattern: every page holds a pattern derived from (page, counter), so
 * any byte can be checked after a migration against the counter the writer last wrote there.
 * Counter 0 means "never written" (the page reads as zeros).
 */
import type { AddressSpace } from '../../src/index.js';

export function fillPage(page: Uint8Array, index: number, counter: number): Uint8Array {
  const words = new Uint32Array(page.buffer, page.byteOffset, page.length >>> 2);
  let x = (Math.imul(index + 1, 2654435761) ^ Math.imul(counter, 40503)) >>> 0;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  words[0] = index;
  words[1] = counter;
  return page;
}

/** The first page whose bytes differ from its expected counter's pattern, described; else undefined. */
export function checkPattern(
  space: AddressSpace,
  counters: Uint32Array,
  pageCount = counters.length,
): string | undefined {
  const page = new Uint8Array(space.pageSize);
  const want = new Uint8Array(space.pageSize);
  for (let p = 0; p < pageCount; p++) {
    space.read(p * space.pageSize, page);
    if (counters[p] === 0) want.fill(0);
    else fillPage(want, p, counters[p]!);
    if (Buffer.compare(page, want) !== 0) {
      const got = new Uint32Array(page.buffer, 0, 2);
      return `page ${p}: expected counter ${counters[p]}, found page ${got[0]} counter ${got[1]}`;
    }
  }
  return undefined;
}

/** Runs of the migrate tests: 5 in the suite, MIGRATE_RUNS in the soak. */
export const RUNS = Number(process.env.MIGRATE_RUNS ?? 5);

/** The page the sequential writer's write number `s` goes to (a fixed pseudo-random sequence). */
export function pageOf(seed: number, s: number, pages: number): number {
  let x = (Math.imul(s, 0x9e3779b1) ^ Math.imul(seed + 1, 0x85ebca6b)) >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  return (x >>> 0) % pages;
}

/** The counters after the initial fill (every page but each fourth, counter 1). */
export function initialCounters(pages: number): Uint32Array {
  const counters = new Uint32Array(pages);
  for (let p = 0; p < pages; p++) if (p % 4 !== 3) counters[p] = 1;
  return counters;
}

/** Sequential writes are numbered from this (below it: the initial fill's counter). */
export const FIRST_WRITE = 2;

/** The counters after sequential writes FIRST_WRITE … last. */
export function replay(seed: number, pages: number, last: number): Uint32Array {
  const counters = initialCounters(pages);
  for (let s = FIRST_WRITE; s <= last; s++) counters[pageOf(seed, s, pages)] = s;
  return counters;
}
