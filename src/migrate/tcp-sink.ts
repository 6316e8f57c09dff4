/**
 * The engine's PageSink over a MessageConnection: pages go out in PAGES batches of at most
 * BATCH_DATA_PAGES data pages; SYNC asks the destination to confirm that it applied everything
 * sent so far, and its answer carries its own measure of what arrived (the bandwidth the
 * engine decides on is the one the destination saw, not the one the socket buffers took).
 */
import type { MessageConnection } from './connection.js';
import type { PageSink, SinkMeasure } from './engine.js';
import { decodeJson, encodeJsonFrame, PAGE_DATA, PAGE_HOLE, PAGE_ZERO, PageBatchWriter } from './wire.js';
import { MSG_PAGES, MSG_SYNC, MSG_SYNCED } from './protocol.js';
import type { Replies } from './replies.js';

/** Data pages per PAGES message: 256 KiB of 4 KiB pages, small enough to keep the program's turns short. */
export const BATCH_DATA_PAGES = 64;

export class TcpPageSink implements PageSink {
  readonly pageSize: number;
  bytesSent = 0;
  /** The shortest SYNC round trip seen (with nothing queued before it, that is the network's). */
  rttMs: number | undefined;
  private readonly writer: PageBatchWriter;
  private seq = 0;

  constructor(
    private readonly connection: MessageConnection,
    private readonly replies: Replies,
    pageSize: number,
  ) {
    this.pageSize = pageSize;
    this.writer = new PageBatchWriter({
      pageSize,
      maxDataPages: BATCH_DATA_PAGES,
      maxRuns: 4 * BATCH_DATA_PAGES,
    });
  }

  data(page: number, bytes: Uint8Array): boolean {
    return this.writer.put(page, PAGE_DATA, bytes);
  }

  zero(page: number): boolean {
    return this.writer.put(page, PAGE_ZERO);
  }

  hole(page: number): boolean {
    return this.writer.put(page, PAGE_HOLE);
  }

  async send(): Promise<void> {
    if (this.writer.isEmpty) return;
    const frame = this.writer.seal(MSG_PAGES);
    this.bytesSent += frame.length;
    // send() resolves once the socket no longer needs the frame: the writer may then be reused.
    await this.connection.send(frame);
    this.writer.reset();
  }

  async sync(): Promise<SinkMeasure> {
    await this.send();
    const seq = ++this.seq;
    const frame = encodeJsonFrame(MSG_SYNC, { seq });
    this.bytesSent += frame.length;
    const answer = this.replies.expect(MSG_SYNCED);
    this.connection.post(frame);
    const {
      seq: got,
      bytes,
      ms,
    } = decodeJson<{ seq?: unknown; bytes?: unknown; ms?: unknown }>(await answer);
    if (got !== seq || typeof bytes !== 'number' || typeof ms !== 'number') {
      throw this.replies.violation(`SYNCED answers ${String(got)}, expected ${seq}`);
    }
    return { bytes, ms };
  }
}
