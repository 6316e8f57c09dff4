/**
 * Post-copy's messages (types 32–63 of connection.ts) and the few shapes both sides share.
 *
 * Two connections carry a post-copy migration:
 *
 *   main connection (the one the migration's handshake opened)
 *     source → destination  PC_OFFER        { migrationId, size, pageSize, port }: the page server listens
 *     destination → source  PC_PREPARED     {}: its store is attached to the page server
 *     source → destination  PC_SWITCHOVER   the page map (below); the source's gate is closed
 *     destination → source  PC_RESUMED      {}: the destination's space is running
 *     source → destination  PC_PROGRESS     { pushed, served, … }: also a heartbeat, every PROGRESS_INTERVAL_MS
 *     source → destination  PC_COMPLETE     { … }: every page has moved; the destination closes
 *
 *   page-server connection (opened by the destination's store, in its pager's I/O worker)
 *     store → source        PS_ATTACH       { migrationId }: refused unless it is this migration's id
 *     source → store        PS_ATTACHED     {}
 *     source → store        PS_SLOTS        { slots }: at the switchover, the number of data pages
 *     store → source        PS_FETCH        f64 slot: a fault
 *     source → store        PS_PAGES        u32 reason (PUSHED | FAULTED), u32 0, then a page batch over slots
 *     store → source        PS_NOT_NEEDED   f64 slots: discarded at the destination before they arrived
 *     store → source        PS_HAVE_ALL     {}: every slot is local; the store closes the connection
 *
 * Slots. The destination knows the source's data pages by ordinal: slot i is the i-th data page
 * in ascending page order (zero pages and holes need no slot: the map says what they are). So a
 * sparse space of any virtual size costs slots only for its data, and the store's bookkeeping is
 * one byte per data page.
 *
 * The page map (PC_SWITCHOVER's payload): u32 header length, the header as JSON
 * ({ epoch, slots, zeroPages }), then u32 run count, u32 0, and 16-byte runs as in wire.ts
 * (f64 first page, u32 page count, u8 kind PAGE_DATA or PAGE_ZERO, 3 bytes 0). Holes are
 * everything the runs do not name.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import { PAGE_DATA, PAGE_ZERO, RUN_BYTES, encodeFrame, protocolError } from './wire.js';

export const PC_OFFER = 32;
export const PC_PREPARED = 33;
export const PC_SWITCHOVER = 34;
export const PC_RESUMED = 35;
export const PC_PROGRESS = 36;
export const PC_COMPLETE = 37;

export const PS_ATTACH = 40;
export const PS_ATTACHED = 41;
export const PS_SLOTS = 42;
export const PS_FETCH = 43;
export const PS_PAGES = 44;
export const PS_NOT_NEEDED = 45;
export const PS_HAVE_ALL = 46;

/** PS_PAGES reasons. */
export const PAGES_PUSHED = 0;
export const PAGES_FAULTED = 1;
/** Bytes before a PS_PAGES batch: the reason and a reserved word. */
export const PAGES_PREFIX_BYTES = 8;

/** The source sends PC_PROGRESS this often; it is also the destination's proof of life. */
export const PROGRESS_INTERVAL_MS = 200;
/** A fault the source has not answered within this long fails with POSTCOPY_SOURCE_LOST. */
export const FAULT_TIMEOUT_DEFAULT_MS = 10_000;
/** Slots after a faulted one that the store asks for with it (the next data pages). */
export const READ_AHEAD_DEFAULT = 8;

export interface OfferMessage {
  migrationId: string;
  size: number;
  pageSize: number;
  /** The page server's port, on the address the destination reached the source at. */
  port: number;
}

export interface SwitchoverHeader {
  /** The source space's epoch at the switchover: the destination continues from it. */
  epoch: number;
  /** Data pages, which are the slots the store fetches. */
  slots: number;
  zeroPages: number;
}

/** A run of the page map: pages [first, first + count) are all data or all zero. */
export interface MapRun {
  first: number;
  count: number;
  kind: typeof PAGE_DATA | typeof PAGE_ZERO;
}

/** The PC_SWITCHOVER frame: header and runs. */
export function encodeSwitchover(header: SwitchoverHeader, runs: Float64Array, runCount: number): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const payload = Buffer.alloc(4 + json.length + 8 + runCount * RUN_BYTES);
  payload.writeUInt32LE(json.length, 0);
  json.copy(payload, 4);
  let at = 4 + json.length;
  payload.writeUInt32LE(runCount, at);
  at += 8;
  for (let r = 0; r < runCount; r++) {
    payload.writeDoubleLE(runs[3 * r]!, at);
    payload.writeUInt32LE(runs[3 * r + 1]!, at + 8);
    payload.writeUInt32LE(runs[3 * r + 2]!, at + 12);
    at += RUN_BYTES;
  }
  return encodeFrame(PC_SWITCHOVER, payload);
}

/**
 * Reads a PC_SWITCHOVER payload, checking every run against the space's page count and the
 * data runs against the header's slot count before any is used.
 */
export function decodeSwitchover(
  payload: Uint8Array,
  pageCount: number,
): { header: SwitchoverHeader; runs: MapRun[] } {
  const view = Buffer.from(payload.buffer, payload.byteOffset, payload.length);
  if (view.length < 4) throw protocolError('a switchover message is truncated');
  const jsonLength = view.readUInt32LE(0);
  if (4 + jsonLength + 8 > view.length) throw protocolError('a switchover message is truncated');
  let header: SwitchoverHeader;
  try {
    header = JSON.parse(view.toString('utf8', 4, 4 + jsonLength)) as SwitchoverHeader;
  } catch {
    throw protocolError('a switchover header is not valid JSON');
  }
  if (
    typeof header !== 'object' ||
    header === null ||
    !Number.isSafeInteger(header.epoch) ||
    header.epoch < 1 ||
    !Number.isSafeInteger(header.slots) ||
    header.slots < 0 ||
    !Number.isSafeInteger(header.zeroPages) ||
    header.zeroPages < 0
  ) {
    throw protocolError('a switchover header lacks its epoch, slot or zero-page count');
  }
  let at = 4 + jsonLength;
  const count = view.readUInt32LE(at);
  at += 8;
  if (at + count * RUN_BYTES !== view.length) throw protocolError(`a page map of ${count} runs is truncated`);
  const runs: MapRun[] = [];
  let data = 0;
  let zero = 0;
  let end = 0;
  for (let r = 0; r < count; r++, at += RUN_BYTES) {
    const first = view.readDoubleLE(at);
    const pages = view.readUInt32LE(at + 8);
    const kind = view.readUInt32LE(at + 12);
    if (!Number.isInteger(first) || first < end || pages === 0 || first + pages > pageCount) {
      throw protocolError(`a page map names pages [${first}, ${first + pages}) of a ${pageCount}-page space`);
    }
    if (kind !== PAGE_DATA && kind !== PAGE_ZERO) throw protocolError(`a page map has a run of kind ${kind}`);
    if (kind === PAGE_DATA) data += pages;
    else zero += pages;
    end = first + pages;
    runs.push({ first, count: pages, kind });
  }
  if (data !== header.slots || zero !== header.zeroPages) {
    throw protocolError(
      `a page map names ${data} data and ${zero} zero pages, its header ${header.slots} and ${header.zeroPages}`,
    );
  }
  return { header, runs };
}

/** The f64 list of a PS_FETCH or PS_NOT_NEEDED payload, checked against the slot count. */
export function decodeSlots(payload: Uint8Array, slots: number): Float64Array {
  if (payload.length % 8 !== 0) throw protocolError('a slot list is not a whole number of 8-byte slots');
  const out = new Float64Array(payload.length / 8);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
  for (let i = 0; i < out.length; i++) {
    const slot = view.getFloat64(8 * i, true);
    if (!Number.isInteger(slot) || slot < 0 || slot >= slots) {
      throw protocolError(`a message names slot ${slot} of ${slots}`);
    }
    out[i] = slot;
  }
  return out;
}

export function encodeSlots(type: number, slots: ArrayLike<number>, count = slots.length): Buffer {
  const payload = Buffer.allocUnsafe(8 * count);
  for (let i = 0; i < count; i++) payload.writeDoubleLE(slots[i]!, 8 * i);
  return encodeFrame(type, payload);
}

/** The error every fault of an unmoved page, and the completion, meet once the source is gone. */
export function sourceLost(why: string): MemfabricError {
  return new MemfabricError(
    ErrorCodes.POSTCOPY_SOURCE_LOST,
    `post-copy migration lost its source (${why}) before every page had moved: the pages still on ` +
      'the source are gone; restore from a checkpoint or a standby (use pre-copy when the source may die mid-migration)',
  );
}

// -----------------------------------------------------------------------------------------
// Progress, shared between the store (in the pager's I/O worker) and the main thread: one
// SharedArrayBuffer the store writes and the main thread reads, so the destination reports its
// progress without a message per page. One writer (the store); the readers tolerate a count
// read mid-update (they are figures, not decisions), except `state`, which is an Atomics word.

export const P_SLOTS = 0;
export const P_REMAINING = 1;
export const P_BY_FAULT = 2;
export const P_BY_PUSH = 3;
export const P_NOT_NEEDED = 4;
export const P_BYTES = 5;
export const P_DUPLICATES = 6;
export const P_PUSH_BATCHES = 7;
export const P_FAULTS = 8;
/** Slots asked of the source and not arrived yet (faults and their read-ahead). */
export const P_IN_FLIGHT = 9;
/** Fault latency histogram: bucket b counts faults of latency in [2^(b/4), 2^((b+1)/4)) microseconds. */
export const P_HISTOGRAM = 16;
export const HISTOGRAM_BUCKETS = 96;
const PROGRESS_F64 = P_HISTOGRAM + HISTOGRAM_BUCKETS;
/** The state word (Int32, after the f64 fields). */
const STATE_INDEX = PROGRESS_F64 * 2;
export const STATE_ATTACHED = 0;
export const STATE_MAPPED = 1;
export const STATE_COMPLETE = 2;
export const STATE_LOST = 3;

export function createProgressBuffer(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(PROGRESS_F64 * 8 + 8);
  new Float64Array(sab, 0, PROGRESS_F64)[P_SLOTS] = -1;
  return sab;
}

export class ProgressCells {
  readonly f64: Float64Array;
  private readonly i32: Int32Array;

  constructor(sab: SharedArrayBuffer) {
    if (!(sab instanceof SharedArrayBuffer) || sab.byteLength < PROGRESS_F64 * 8 + 8) {
      throw new MemfabricError(ErrorCodes.INVALID_ARGUMENT, 'a post-copy progress buffer is not one');
    }
    this.f64 = new Float64Array(sab, 0, PROGRESS_F64);
    this.i32 = new Int32Array(sab);
  }

  get state(): number {
    return Atomics.load(this.i32, STATE_INDEX);
  }

  set state(value: number) {
    Atomics.store(this.i32, STATE_INDEX, value);
  }

  recordLatency(microseconds: number): void {
    const bucket = Math.min(
      HISTOGRAM_BUCKETS - 1,
      Math.max(0, Math.floor(4 * Math.log2(Math.max(1, microseconds)))),
    );
    this.f64[P_HISTOGRAM + bucket]!++;
    this.f64[P_FAULTS]!++;
  }

  /** The latency below which `fraction` of the faults fell, in milliseconds (NaN with no fault). */
  latencyMs(fraction: number): number {
    const total = this.f64[P_FAULTS]!;
    if (total === 0) return Number.NaN;
    const want = Math.ceil(fraction * total);
    let seen = 0;
    for (let b = 0; b < HISTOGRAM_BUCKETS; b++) {
      seen += this.f64[P_HISTOGRAM + b]!;
      // The bucket's upper edge: a histogram can say no more than that.
      if (seen >= want) return 2 ** ((b + 1) / 4) / 1000;
    }
    return 2 ** (HISTOGRAM_BUCKETS / 4) / 1000;
  }
}
