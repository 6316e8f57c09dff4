/**
 * Client-side discovery of the fleet's live appliances from etcd, in place of a static list:
 * one range read of /memfabric/v1/appliances/ and then a watch on that prefix from the
 * revision after it, so the view is a consistent copy of the keys, changed by the events in
 * order. An appliance whose key vanishes (it stopped and revoked its lease, or it died and the
 * lease expired) is gone from `live()` and `states()` at once, and listeners hear a 'down' event
 * with its last record (a controller uses it to rebuild what that appliance held).
 *
 * The watch stream reconnects by itself (to another member if one is down) and resumes from the
 * last revision it saw, so no event is missed across a leader change. If etcd cancels the watch
 * (its revision was compacted away), the view is read again in full and the differences are
 * reported as events before watching resumes.
 */
import type { IKeyValue, Watcher } from 'etcd3';
import type { Logger } from 'pino';
import type { ApplianceState } from '../fabric/directory.js';
import { EtcdConnection, EtcdKeys, type EtcdOptions } from './etcd.js';
import type { ApplianceRecord } from './registration.js';

export type DiscoveryEvent =
  | { type: 'up'; appliance: ApplianceRecord }
  | { type: 'changed'; appliance: ApplianceRecord }
  | { type: 'down'; appliance: ApplianceRecord };

export interface DiscoveryOptions extends EtcdOptions {
  logger?: Pick<Logger, 'warn'>;
}

export class ApplianceDiscovery {
  readonly connection: EtcdConnection;
  private readonly logger: Pick<Logger, 'warn'> | undefined;
  /** Live appliances by key. */
  private readonly appliances = new Map<string, ApplianceRecord>();
  private readonly listeners = new Set<(event: DiscoveryEvent) => void>();
  private watcher: Watcher | undefined;
  private closed = false;
  private resyncing: Promise<void> | undefined;

  private constructor(options: DiscoveryOptions) {
    this.connection = new EtcdConnection(options);
    this.logger = options.logger;
  }

  /**
   * Reads the live appliances and starts watching. MF_CATALOG_UNAVAILABLE when etcd does not
   * answer within the connection's retry bound.
   */
  static async start(options: DiscoveryOptions): Promise<ApplianceDiscovery> {
    const discovery = new ApplianceDiscovery(options);
    try {
      await discovery.sync();
    } catch (error) {
      discovery.close();
      throw error;
    }
    return discovery;
  }

  /** The live appliances, by id order. */
  live(): ApplianceRecord[] {
    return [...this.appliances.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /**
   * The live appliances as placement wants them (fabric/placement.ts): reachable as far as
   * etcd knows, with the free memory they last published.
   */
  states(): ApplianceState[] {
    return this.live().map((record) => ({
      url: record.url,
      reachable: true,
      nbd: nbdReachable(record),
      capacityBytes: record.capacityBytes,
      freeBytes: record.freeBytes,
    }));
  }

  /** Calls `listener` for every change from now on; returns a function that stops it. */
  onChange(listener: (event: DiscoveryEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const watcher = this.watcher;
    this.watcher = undefined;
    void watcher?.cancel().catch(() => undefined);
    this.connection.close();
  }

  /** Reads every key, reports the differences, and watches from the revision after the read. */
  private async sync(): Promise<void> {
    const { kvs, revision } = await this.connection.rangeAll('list the live appliances', EtcdKeys.appliances);
    const seen = new Map<string, ApplianceRecord>();
    for (const kv of kvs) {
      const record = this.decode(kv);
      if (record) seen.set(kv.key.toString(), record);
    }
    for (const [key, record] of this.appliances) {
      if (!seen.has(key)) this.apply(key, undefined, record);
    }
    for (const [key, record] of seen) this.apply(key, record);
    if (this.closed) return;
    const watcher = await this.connection.watch('watch the live appliances', (client) =>
      client
        .watch()
        .prefix(EtcdKeys.appliances)
        .startRevision(String(BigInt(revision) + 1n)),
    );
    if (this.closed) {
      await watcher.cancel().catch(() => undefined);
      return;
    }
    this.watcher = watcher;
    watcher.on('put', (kv) => {
      const record = this.decode(kv);
      if (record) this.apply(kv.key.toString(), record);
    });
    watcher.on('delete', (kv) => this.apply(kv.key.toString(), undefined));
    watcher.on('error', (error) => {
      // Canceled by etcd (a compacted revision): read everything again and watch anew.
      if (this.closed || this.watcher !== watcher) return;
      this.watcher = undefined;
      void watcher.cancel().catch(() => undefined);
      this.logger?.warn(
        { component: 'etcd', reason: error.message },
        'appliance watch canceled; reading again',
      );
      this.resync();
    });
  }

  private resync(): void {
    if (this.closed || this.resyncing) return;
    this.resyncing = this.sync()
      .catch((error: unknown) => {
        this.logger?.warn(
          { component: 'etcd', reason: (error as Error).message },
          'appliance discovery resync failed',
        );
        setTimeout(() => this.resync(), 1000).unref();
      })
      .finally(() => {
        this.resyncing = undefined;
      });
  }

  /** Records a put (record given) or a delete of `key`, and tells the listeners. */
  private apply(key: string, record: ApplianceRecord | undefined, known = this.appliances.get(key)): void {
    let event: DiscoveryEvent | undefined;
    if (record) {
      this.appliances.set(key, record);
      if (!known || known.startedAt !== record.startedAt || known.url !== record.url) {
        event = { type: 'up', appliance: record };
      } else if (JSON.stringify(known) !== JSON.stringify(record)) {
        event = { type: 'changed', appliance: record };
      }
    } else if (known) {
      this.appliances.delete(key);
      event = { type: 'down', appliance: known };
    }
    if (!event) return;
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (error) {
        this.logger?.warn(
          { component: 'etcd', reason: (error as Error).message },
          'discovery listener failed',
        );
      }
    }
  }

  private decode(kv: IKeyValue): ApplianceRecord | undefined {
    try {
      const value = JSON.parse(kv.value.toString()) as Partial<ApplianceRecord>;
      if (
        typeof value.id === 'string' &&
        typeof value.url === 'string' &&
        typeof value.nbd?.host === 'string' &&
        Number.isSafeInteger(value.nbd.port) &&
        Number.isSafeInteger(value.capacityBytes) &&
        Number.isSafeInteger(value.freeBytes) &&
        Number.isSafeInteger(value.startedAt)
      ) {
        return value as ApplianceRecord;
      }
    } catch {
      // reported below
    }
    this.logger?.warn({ component: 'etcd', key: kv.key.toString() }, 'unusable appliance record skipped');
    return undefined;
  }
}

/** An appliance listening on every interface is reached at the host of its admin URL. */
function nbdReachable(record: ApplianceRecord): ApplianceRecord['nbd'] {
  const { host, port } = record.nbd;
  if (host !== '0.0.0.0' && host !== '::' && host !== '') return { host, port };
  return { host: new URL(record.url).hostname.replace(/^\[|\]$/g, ''), port };
}
