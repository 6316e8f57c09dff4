/**
 * NbdConnectionGroup: several connections to one export, used as one client (multi-conn).
 *
 *   const group = await NbdConnectionGroup.connect({ port, exportName: 'vm1', connections: 4 });
 *   await Promise.all(pages.map((p) => group.write(p.offset, p.bytes)));
 *   await group.flush();
 *
 * The first connection is opened alone; the others only if the server advertises
 * NBD_FLAG_CAN_MULTI_CONN (without it the spec says clients SHOULD NOT spread commands over
 * several connections, and the group keeps one). Each call goes to the connection with the
 * fewest requests in flight or queued (ties: round robin).
 *
 * Flush: with CAN_MULTI_CONN, "the effects of NBD_CMD_FLUSH ... MUST be visible across all
 * connections when the server sends its reply", and a flush covers writes already answered.
 * So group.flush() first waits (barrier) until every write, trim and writeZeroes issued on any
 * connection before the call has been answered - the spec: a client "MUST NOT issue an
 * NBD_CMD_FLUSH request until it has received the reply for all write commands which it
 * expects to be covered" - then sends one NBD_CMD_FLUSH on one connection.
 *
 * The group lives and dies as one: when any connection closes or fails, the others are
 * destroyed (their in-flight requests fail with MF_CONNECTION_CLOSED, caused by the first
 * failure), `closed` resolves and 'close' is emitted. `reconnect()` reopens all of them.
 */
import { EventEmitter } from 'node:events';
import { invalidArgument } from '../../errors.js';
import type { MemfabricError } from '../../errors.js';
import { connectionClosed } from './errors.js';
import type { NbdBlockSizes, NbdClientOptions, NbdExtent, NbdTransmissionFlags } from './client.js';
import { NbdClient, resolveClientOptions } from './client.js';

/** Most connections one group opens. */
export const GROUP_CONNECTIONS_MAX = 16;
export const GROUP_CONNECTIONS_DEFAULT = 4;

export interface NbdConnectionGroupOptions extends NbdClientOptions {
  /** Connections to open when the server allows multi-conn (else 1). Default 4, at most 16. */
  connections?: number;
}

const GROUP_OPEN = 0;
const GROUP_BUSY = 1; // disconnecting or reconnecting: member closes are expected
const GROUP_CLOSED = 2;

export class NbdConnectionGroup extends EventEmitter {
  static async connect(options: NbdConnectionGroupOptions = {}): Promise<NbdConnectionGroup> {
    const wanted = options.connections ?? GROUP_CONNECTIONS_DEFAULT;
    if (!Number.isInteger(wanted) || wanted < 1 || wanted > GROUP_CONNECTIONS_MAX) {
      throw invalidArgument(`connections must be an integer from 1 to ${GROUP_CONNECTIONS_MAX}`);
    }
    resolveClientOptions(options); // validate once, before any socket opens
    const first = await NbdClient.connect(options);
    const count = first.transmissionFlags.canMultiConn ? wanted : 1;
    const rest = await Promise.allSettled(
      Array.from({ length: count - 1 }, () => NbdClient.connect(options)),
    );
    const clients = [first];
    let failure: unknown;
    for (const result of rest) {
      if (result.status === 'fulfilled') clients.push(result.value);
      else failure ??= result.reason;
    }
    if (failure !== undefined) {
      for (const client of clients) client.destroy();
      throw failure;
    }
    return new NbdConnectionGroup(clients);
  }

  /** The member connections (1 when the server does not allow multi-conn). */
  readonly clients: readonly NbdClient[];
  private state = GROUP_OPEN;
  private next = 0;
  private closedPromise!: Promise<MemfabricError | undefined>;
  private resolveClosed: (reason: MemfabricError | undefined) => void = () => {};

  private constructor(clients: NbdClient[]) {
    super();
    this.clients = clients;
    this.renewClosed();
    for (const client of clients) client.on('close', (reason) => this.memberClosed(client, reason));
  }

  get size(): number {
    return this.clients[0].size;
  }

  get transmissionFlags(): NbdTransmissionFlags {
    return this.clients[0].transmissionFlags;
  }

  get blockSizes(): NbdBlockSizes | undefined {
    return this.clients[0].blockSizes;
  }

  get exportName(): string {
    return this.clients[0].exportName;
  }

  get isOpen(): boolean {
    return this.state === GROUP_OPEN;
  }

  /** Requests in flight over all connections. */
  get inFlight(): number {
    let n = 0;
    for (const client of this.clients) n += client.inFlight;
    return n;
  }

  /** Resolves when the group closes: undefined after disconnect(), else the first failure. */
  get closed(): Promise<MemfabricError | undefined> {
    return this.closedPromise;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.pick().read(offset, length);
  }

  readInto(offset: number, dst: Uint8Array): Promise<void> {
    return this.pick().readInto(offset, dst);
  }

  write(offset: number, data: Uint8Array, options?: { fua?: boolean }): Promise<void> {
    return this.pick().write(offset, data, options);
  }

  trim(offset: number, length: number, options?: { fua?: boolean }): Promise<void> {
    return this.pick().trim(offset, length, options);
  }

  writeZeroes(
    offset: number,
    length: number,
    options?: { noHole?: boolean; fastZero?: boolean; fua?: boolean },
  ): Promise<void> {
    return this.pick().writeZeroes(offset, length, options);
  }

  cache(offset: number, length: number): Promise<void> {
    return this.pick().cache(offset, length);
  }

  blockStatus(
    offset: number,
    length: number,
    options?: { reqOne?: boolean; context?: string },
  ): Promise<NbdExtent[]> {
    return this.pick().blockStatus(offset, length, options);
  }

  /**
   * Makes every mutation issued on any connection before this call durable and visible on all
   * connections: waits for those still in flight, then one NBD_CMD_FLUSH (see the top).
   */
  async flush(): Promise<void> {
    if (this.clients.length === 1) return this.clients[0].flush();
    await Promise.all(this.clients.map((client) => client.barrier()));
    return this.pick().flush();
  }

  /** Soft disconnect of every connection (each finishes its requests first). */
  async disconnect(): Promise<void> {
    if (this.state === GROUP_CLOSED) return;
    this.state = GROUP_BUSY;
    await Promise.all(this.clients.map((client) => client.disconnect()));
    const reason = await firstReason(this.clients);
    this.close(reason);
  }

  /** Hard close of every connection. */
  destroy(reason?: MemfabricError): void {
    if (this.state === GROUP_CLOSED) return;
    this.state = GROUP_BUSY;
    for (const client of this.clients) client.destroy(reason);
    this.close(reason ?? connectionClosed('nbd connection group destroyed'));
  }

  /** Reopens every connection (destroying any still open). Nothing that failed is retried. */
  async reconnect(): Promise<void> {
    this.state = GROUP_BUSY;
    const results = await Promise.allSettled(this.clients.map((client) => client.reconnect()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) {
      for (const client of this.clients) client.destroy();
      this.state = GROUP_CLOSED;
      throw failed.reason;
    }
    this.renewClosed();
    this.state = GROUP_OPEN;
  }

  /** The connection with the least work (in flight + queued); ties rotate. */
  private pick(): NbdClient {
    const clients = this.clients;
    const n = clients.length;
    if (n === 1) return clients[0];
    const start = this.next;
    this.next = start + 1 === n ? 0 : start + 1;
    let best = clients[start];
    let bestLoad = best.inFlight + best.queued;
    for (let i = 1; i < n && bestLoad > 0; i++) {
      const client = clients[(start + i) % n];
      const load = client.inFlight + client.queued;
      if (load < bestLoad) {
        best = client;
        bestLoad = load;
      }
    }
    return best;
  }

  private memberClosed(member: NbdClient, reason: MemfabricError | undefined): void {
    if (this.state !== GROUP_OPEN) return;
    this.state = GROUP_BUSY;
    const why = reason ?? connectionClosed(`nbd connection to ${member.host}:${member.port} closed`);
    for (const client of this.clients) {
      if (client !== member) {
        client.destroy(connectionClosed(`another connection of the group failed: ${why.message}`, why));
      }
    }
    this.close(why);
  }

  private renewClosed(): void {
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  private close(reason: MemfabricError | undefined): void {
    this.state = GROUP_CLOSED;
    this.resolveClosed(reason);
    this.emit('close', reason);
  }
}

async function firstReason(clients: readonly NbdClient[]): Promise<MemfabricError | undefined> {
  for (const client of clients) {
    const reason = await client.closed;
    if (reason !== undefined) return reason;
  }
  return undefined;
}
