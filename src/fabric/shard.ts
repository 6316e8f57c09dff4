/**
 * One shard of a fabric region: a region on one appliance, reached over one NBD connection.
 *
 * States: `live` (read and written), `rebuilding` (written, not yet read: a rebuild is filling
 * it), `lost` (never used again: its appliance failed, hung past the request timeout, or
 * answered an error). A lost shard's connection is destroyed, so an appliance that comes back
 * after a hang cannot receive anything more from this region, and nothing it holds is read.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import { NbdClient, type NbdClientTls } from '../nbd/index.js';
import type { Endpoint } from '../appliance/appliance.js';

export type ShardState = 'live' | 'rebuilding' | 'lost';

export interface ShardStatus {
  index: number;
  appliance: string;
  region: string;
  state: ShardState;
  reason?: string;
}

export class Shard {
  readonly index: number;
  readonly appliance: string;
  readonly region: string;
  /** Where the appliance serves NBD (recorded in the region's descriptor). */
  readonly endpoint: Endpoint;
  state: ShardState;
  reason: string | undefined;
  private client: NbdClient | undefined;
  /** Called when the connection closes unexpectedly instead of marking the shard lost. */
  onClose: ((shard: Shard, error: Error | undefined) => void) | undefined;

  private constructor(
    index: number,
    appliance: string,
    region: string,
    endpoint: Endpoint,
    client: NbdClient | undefined,
    state: ShardState,
    onClose: ((shard: Shard, error: Error | undefined) => void) | undefined,
  ) {
    this.onClose = onClose;
    this.index = index;
    this.appliance = appliance;
    this.region = region;
    this.endpoint = endpoint;
    this.client = client;
    this.state = state;
    client?.on('close', (error?: Error) => {
      if (this.state === 'lost') return;
      // The owner may find the region elsewhere (a migration); by default the shard is lost.
      if (this.onClose) this.onClose(this, error);
      else this.lose(error ? `connection closed: ${error.message}` : 'connection closed');
    });
  }

  static async open(options: {
    index: number;
    appliance: string;
    region: string;
    nbd: Endpoint;
    requestTimeoutMs: number;
    /** NBD TLS credentials (the fabric's `tls`); default plain. */
    tls?: NbdClientTls | undefined;
    state?: ShardState;
    /** Called when the connection closes unexpectedly (instead of marking the shard lost). */
    onClose?: (shard: Shard, error: Error | undefined) => void;
  }): Promise<Shard> {
    const client = await NbdClient.connect({
      host: options.nbd.host,
      port: options.nbd.port,
      exportName: options.region,
      requestTimeoutMs: options.requestTimeoutMs,
      connectTimeoutMs: options.requestTimeoutMs,
      ...(options.tls ? { tls: options.tls } : {}),
    });
    return new Shard(
      options.index,
      options.appliance,
      options.region,
      options.nbd,
      client,
      options.state ?? 'live',
      options.onClose,
    );
  }

  /**
   * A shard known lost when its region is opened (its appliance is down, or the descriptor says
   * it missed writes): never connected, never read or written.
   */
  static lostAt(options: {
    index: number;
    appliance: string;
    region: string;
    nbd: Endpoint;
    reason: string;
  }): Shard {
    const shard = new Shard(
      options.index,
      options.appliance,
      options.region,
      options.nbd,
      undefined,
      'lost',
      undefined,
    );
    shard.reason = options.reason;
    return shard;
  }

  /** The connection, for a shard that is not lost. */
  get nbd(): NbdClient {
    // A shard failure like any other (the caller's settle counts it), not a fault of the caller.
    if (this.state === 'lost' || !this.client)
      throw new MemfabricError(ErrorCodes.CONNECTION_CLOSED, `shard ${this.index} is lost`);
    return this.client;
  }

  get writable(): boolean {
    return this.state !== 'lost';
  }

  get readable(): boolean {
    return this.state === 'live';
  }

  /** Marks the shard lost and drops its connection (idempotent). */
  lose(reason: string): void {
    if (this.state === 'lost') return;
    this.state = 'lost';
    this.reason = reason;
    const client = this.client;
    this.client = undefined;
    client?.destroy();
  }

  /** Ends the connection politely (region close). */
  async close(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client) await client.disconnect().catch(() => client.destroy());
  }

  status(): ShardStatus {
    return {
      index: this.index,
      appliance: this.appliance,
      region: this.region,
      state: this.state,
      ...(this.reason ? { reason: this.reason } : {}),
    };
  }
}
