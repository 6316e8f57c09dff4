/**
 * The migration wire format: how two memfabric processes move pages over a byte stream (TCP
 * here; TLS later). It is ours rather than NBD because a migration needs what NBD has no words
 * for: rounds, epochs, a handover, acknowledgements of whole epochs, pages fetched on demand
 * in the other direction. Everything is little-endian.
 *
 * A message is one frame:
 *
 *   offset size
 *    0     4   magic "MFMG"
 *    4     1   version (WIRE_VERSION); a peer speaking another version is refused at once
 *    5     1   type (each protocol names its own types: migration, standby, …)
 *    6     2   flags (0; reserved, and refused when set)
 *    8     4   payload length in bytes (at most FRAME_PAYLOAD_MAX)
 *   12     4   xxh32 of the payload (seed 0): a damaged batch is refused, never applied
 *   16     …   payload
 *
 * Pages travel in page batches (the payload of a PAGES-like message, after any fixed prefix
 * its protocol puts in front):
 *
 *    0     4   run count R
 *    4     4   reserved (0)
 *    8   16·R  runs: first page (f64), page count (u32), kind (u8: PAGE_DATA, PAGE_ZERO,
 *              PAGE_HOLE), 3 bytes reserved
 *    …         the bytes of every PAGE_DATA run, in run order, pageSize bytes per page
 *
 * Zero pages and holes cost 16 bytes per run whatever their length, so a sparse or zeroed
 * space costs almost nothing on the wire.
 */
import { xxh32 } from '@node-rs/xxhash';
import { ErrorCodes, MemfabricError } from '../errors.js';

export const WIRE_MAGIC = 0x474d464d; // "MFMG" read as a little-endian u32
export const WIRE_VERSION = 1;
export const FRAME_HEADER_BYTES = 16;
/** Largest payload a peer accepts: bounds what one message can make the receiver buffer. */
export const FRAME_PAYLOAD_MAX = 64 * 1024 * 1024;

export const PAGE_DATA = 0;
export const PAGE_ZERO = 1;
export const PAGE_HOLE = 2;
export type PageKind = typeof PAGE_DATA | typeof PAGE_ZERO | typeof PAGE_HOLE;

export const BATCH_HEADER_BYTES = 8;
export const RUN_BYTES = 16;

/** A peer sent something this side cannot accept: the connection is unusable. */
export function protocolError(message: string): MemfabricError {
  return new MemfabricError(
    ErrorCodes.MIGRATION_PROTOCOL,
    `migration peer: ${message}; check that both sides run the same memfabric version`,
  );
}

/** Writes a frame header for `payload` (already in place after it) into `frame[0..16)`. */
export function sealFrame(frame: Buffer, type: number, payloadLength: number): Buffer {
  if (payloadLength > FRAME_PAYLOAD_MAX) {
    throw new RangeError(`frame payload ${payloadLength} exceeds ${FRAME_PAYLOAD_MAX} bytes`);
  }
  frame.writeUInt32LE(WIRE_MAGIC, 0);
  frame[4] = WIRE_VERSION;
  frame[5] = type;
  frame.writeUInt16LE(0, 6);
  frame.writeUInt32LE(payloadLength, 8);
  const payload = frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + payloadLength);
  frame.writeUInt32LE(xxh32(payload, 0), 12);
  return frame.subarray(0, FRAME_HEADER_BYTES + payloadLength);
}

/** A whole frame (header and payload) holding `payload`, in a fresh buffer. */
export function encodeFrame(type: number, payload: Uint8Array = EMPTY): Buffer {
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  frame.set(payload, FRAME_HEADER_BYTES);
  return sealFrame(frame, type, payload.length);
}

/** A frame whose payload is `value` as JSON: for the few small control messages. */
export function encodeJsonFrame(type: number, value: unknown): Buffer {
  return encodeFrame(type, Buffer.from(JSON.stringify(value), 'utf8'));
}

/** Parses a control message's JSON payload; a payload that is not a JSON object is a protocol error. */
export function decodeJson<T extends object>(payload: Uint8Array): T {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.length).toString('utf8'));
  } catch {
    throw protocolError('a control message is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw protocolError('a control message is not a JSON object');
  }
  return value as T;
}

const EMPTY = new Uint8Array(0);

/**
 * Cuts a byte stream into frames. Feed it every chunk the socket delivers; it calls
 * `onFrame(type, payload)` for each complete, verified frame. The payload is a view that is
 * valid only during the call (copy what must outlive it). A malformed frame throws a
 * PROTOCOL MemfabricError; after that the reader is poisoned and the connection must close.
 *
 * Why by hand: a frame is 16 bytes of header; a stream-parsing library would cost more to
 * adapt than these lines. Chunks are copied only when a frame spans them.
 */
export class FrameReader {
  /**
   * Bytes of an incomplete frame, as the chunks they came in (copies: a caller may reuse its
   * chunk). They are joined once, when the frame is complete, so a large frame arriving in
   * many small chunks costs two copies of its bytes, not one per chunk.
   */
  private chunks: Buffer[] = [];
  private size = 0;
  private poisoned = false;

  constructor(
    private readonly onFrame: (type: number, payload: Buffer) => void,
    private readonly payloadMax = FRAME_PAYLOAD_MAX,
  ) {}

  /** Bytes received but not yet part of a complete frame. */
  get buffered(): number {
    return this.size;
  }

  push(chunk: Buffer): void {
    if (this.poisoned) throw protocolError('data after a malformed frame');
    try {
      if (this.size === 0) {
        this.consume(chunk);
        return;
      }
      this.chunks.push(Buffer.from(chunk));
      this.size += chunk.length;
      if (this.size < FRAME_HEADER_BYTES) return;
      const first = this.chunks[0]!;
      const head =
        first.length >= FRAME_HEADER_BYTES ? first : Buffer.concat(this.chunks, FRAME_HEADER_BYTES);
      if (this.size < FRAME_HEADER_BYTES + this.payloadLength(head, 0)) return;
      const data = Buffer.concat(this.chunks, this.size);
      this.chunks = [];
      this.size = 0;
      this.consume(data);
    } catch (error) {
      this.poisoned = true;
      this.chunks = [];
      this.size = 0;
      throw error;
    }
  }

  /** Delivers every complete frame of `data` and keeps (a copy of) the incomplete tail. */
  private consume(data: Buffer): void {
    let at = 0;
    while (data.length - at >= FRAME_HEADER_BYTES) {
      const length = this.payloadLength(data, at);
      if (data.length - at < FRAME_HEADER_BYTES + length) break;
      const payload = data.subarray(at + FRAME_HEADER_BYTES, at + FRAME_HEADER_BYTES + length);
      const type = data[at + 5]!;
      if (xxh32(payload, 0) !== data.readUInt32LE(at + 12)) {
        throw protocolError(`a frame of type ${type} failed its checksum (damaged in transit)`);
      }
      at += FRAME_HEADER_BYTES + length;
      this.onFrame(type, payload);
    }
    if (at < data.length) {
      this.chunks = [Buffer.from(data.subarray(at))];
      this.size = data.length - at;
    }
  }

  /** Checks the header at `at` (magic, version, flags, length bound) and returns its payload length. */
  private payloadLength(data: Buffer, at: number): number {
    if (data.readUInt32LE(at) !== WIRE_MAGIC)
      throw protocolError('a frame does not start with the MFMG magic');
    const version = data[at + 4]!;
    if (version !== WIRE_VERSION) {
      throw protocolError(`it speaks wire version ${version}, this side ${WIRE_VERSION}`);
    }
    if (data.readUInt16LE(at + 6) !== 0) throw protocolError('a frame has flags this version does not know');
    const length = data.readUInt32LE(at + 8);
    if (length > this.payloadMax) {
      throw protocolError(`a frame of ${length} bytes exceeds the ${this.payloadMax}-byte limit`);
    }
    return length;
  }
}

/**
 * Builds page batches in one reused buffer: add runs (with their bytes for data runs), then
 * `seal` to get a frame. Consecutive pages of the same kind extend the last run. Nothing is
 * allocated per page.
 */
export class PageBatchWriter {
  readonly pageSize: number;
  readonly maxRuns: number;
  readonly maxDataPages: number;
  private readonly buffer: Buffer;
  /** Bytes of fixed prefix the message puts before the batch (after the frame header). */
  private readonly prefixBytes: number;
  private runs = 0;
  private dataPages = 0;
  private pages = 0;
  private readonly runTable: Buffer;
  private readonly dataArea: Buffer;
  private lastPageEnd = -1;
  private lastKind = -1;

  constructor(options: { pageSize: number; maxDataPages: number; maxRuns?: number; prefixBytes?: number }) {
    this.pageSize = options.pageSize;
    this.maxDataPages = options.maxDataPages;
    this.maxRuns = options.maxRuns ?? Math.max(16, options.maxDataPages);
    this.prefixBytes = options.prefixBytes ?? 0;
    const tableStart = FRAME_HEADER_BYTES + this.prefixBytes + BATCH_HEADER_BYTES;
    this.buffer = Buffer.allocUnsafe(
      tableStart + this.maxRuns * RUN_BYTES + this.maxDataPages * this.pageSize,
    );
    this.runTable = this.buffer.subarray(tableStart, tableStart + this.maxRuns * RUN_BYTES);
    this.dataArea = this.buffer.subarray(tableStart + this.maxRuns * RUN_BYTES);
  }

  /** The fixed prefix's bytes, to fill before `seal` (its content is the caller's). */
  get prefix(): Buffer {
    const start = FRAME_HEADER_BYTES;
    return this.buffer.subarray(start, start + this.prefixBytes);
  }

  /** Pages added since the last reset (data, zero and hole). */
  get pageCount(): number {
    return this.pages;
  }

  get dataPageCount(): number {
    return this.dataPages;
  }

  get isEmpty(): boolean {
    return this.runs === 0;
  }

  /** Whether page `page` of `kind` fits (a data page needs data room, and a new run a free run slot). */
  fits(page: number, kind: PageKind): boolean {
    if (kind === PAGE_DATA && this.dataPages >= this.maxDataPages) return false;
    return this.runs < this.maxRuns || this.extends(page, kind);
  }

  /**
   * Adds one page of `kind` at `page` and returns where its bytes go (a data page: the caller
   * fills the returned pageSize-byte view, valid until seal/reset), or undefined for zero
   * pages and holes. Check `fits` first; adding to a full batch throws.
   */
  add(page: number, kind: PageKind): Buffer | undefined {
    if (!this.fits(page, kind)) throw new RangeError('page batch is full');
    const start = this.append(page, kind);
    return start < 0 ? undefined : this.dataArea.subarray(start, start + this.pageSize);
  }

  /** Records the page (it fits); returns where a data page's bytes go in dataArea, else -1. */
  private append(page: number, kind: PageKind): number {
    if (this.extends(page, kind)) {
      const at = (this.runs - 1) * RUN_BYTES;
      this.runTable.writeUInt32LE(this.runTable.readUInt32LE(at + 8) + 1, at + 8);
    } else {
      const at = this.runs * RUN_BYTES;
      this.runTable.writeDoubleLE(page, at);
      this.runTable.writeUInt32LE(1, at + 8);
      this.runTable.writeUInt32LE(kind, at + 12);
      this.runs++;
    }
    this.lastPageEnd = page + 1;
    this.lastKind = kind;
    this.pages++;
    if (kind !== PAGE_DATA) return -1;
    const start = this.dataPages * this.pageSize;
    this.dataPages++;
    return start;
  }

  /**
   * Adds one page of `kind` at `page`, copying a data page's bytes from `bytes` (at most
   * pageSize; a shorter source, the partial last page of a space, is padded with zeros).
   * Returns false, adding nothing, when the batch is full. Unlike `add`, allocates nothing:
   * for the migration engine's per-page loop.
   */
  put(page: number, kind: PageKind, bytes?: Uint8Array): boolean {
    if (!this.fits(page, kind)) return false;
    const start = this.append(page, kind);
    if (start >= 0) {
      const n = bytes === undefined ? 0 : Math.min(bytes.length, this.pageSize);
      if (n > 0) this.dataArea.set(n === bytes!.length ? bytes! : bytes!.subarray(0, n), start);
      if (n < this.pageSize) this.dataArea.fill(0, start + n, start + this.pageSize);
    }
    return true;
  }

  /**
   * The frame of type `type` holding the batch (prefix, run table, data), as a view of the
   * reused buffer: send it and wait for the send to complete before the next reset.
   */
  seal(type: number): Buffer {
    const tableStart = FRAME_HEADER_BYTES + this.prefixBytes + BATCH_HEADER_BYTES;
    this.buffer.writeUInt32LE(this.runs, tableStart - BATCH_HEADER_BYTES);
    this.buffer.writeUInt32LE(0, tableStart - BATCH_HEADER_BYTES + 4);
    // Close the gap between the used part of the run table and the data.
    const tableEnd = tableStart + this.runs * RUN_BYTES;
    const dataBytes = this.dataPages * this.pageSize;
    const dataStart = tableStart + this.maxRuns * RUN_BYTES;
    if (tableEnd !== dataStart && dataBytes > 0)
      this.buffer.copy(this.buffer, tableEnd, dataStart, dataStart + dataBytes);
    return sealFrame(this.buffer, type, tableEnd + dataBytes - FRAME_HEADER_BYTES);
  }

  reset(): void {
    this.runs = 0;
    this.dataPages = 0;
    this.pages = 0;
    this.lastPageEnd = -1;
    this.lastKind = -1;
  }

  /** Whether `page` of `kind` continues the last run. */
  private extends(page: number, kind: PageKind): boolean {
    return this.runs > 0 && kind === this.lastKind && page === this.lastPageEnd;
  }
}

/**
 * Reads a page batch (the payload after the message's fixed prefix), calling
 * `visit(firstPage, pages, kind, data)` per run; `data` is the run's bytes for a data run
 * (a view into the payload), an empty view otherwise. Every run is checked against
 * `pageCount` before any is visited, so a batch naming a page outside the space is refused
 * whole and nothing of it is applied.
 */
export function readPageBatch(
  batch: Uint8Array,
  pageSize: number,
  pageCount: number,
  visit: (firstPage: number, pages: number, kind: PageKind, data: Uint8Array) => void,
): number {
  if (batch.length < BATCH_HEADER_BYTES) throw protocolError('a page batch is shorter than its header');
  const view = new DataView(batch.buffer, batch.byteOffset, batch.length);
  const runs = view.getUint32(0, true);
  const tableEnd = BATCH_HEADER_BYTES + runs * RUN_BYTES;
  if (tableEnd > batch.length) throw protocolError(`a page batch of ${runs} runs is truncated`);
  let dataBytes = 0;
  let total = 0;
  for (let r = 0; r < runs; r++) {
    const at = BATCH_HEADER_BYTES + r * RUN_BYTES;
    const first = view.getFloat64(at, true);
    const pages = view.getUint32(at + 8, true);
    const kind = view.getUint32(at + 12, true);
    if (!Number.isInteger(first) || first < 0 || pages === 0 || first + pages > pageCount) {
      throw protocolError(
        `a page batch names pages [${first}, ${first + pages}) of a ${pageCount}-page space`,
      );
    }
    if (kind > PAGE_HOLE) throw protocolError(`a page batch has a run of unknown kind ${kind}`);
    if (kind === PAGE_DATA) dataBytes += pages * pageSize;
    total += pages;
  }
  if (tableEnd + dataBytes !== batch.length) {
    throw protocolError(
      `a page batch carries ${batch.length - tableEnd} data bytes, its runs need ${dataBytes}`,
    );
  }
  let data = tableEnd;
  for (let r = 0; r < runs; r++) {
    const at = BATCH_HEADER_BYTES + r * RUN_BYTES;
    const first = view.getFloat64(at, true);
    const pages = view.getUint32(at + 8, true);
    const kind = view.getUint32(at + 12, true) as PageKind;
    if (kind === PAGE_DATA) {
      const bytes = pages * pageSize;
      visit(first, pages, kind, batch.subarray(data, data + bytes));
      data += bytes;
    } else {
      visit(first, pages, kind, EMPTY);
    }
  }
  return total;
}
